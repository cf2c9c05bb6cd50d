"""Built-in synthetic image-caption data: rendered shape scenes with captions true of the image,
and a web-like split whose texts carry the ground-truth kind of text they are (WEB_TEXT_KINDS).

A scene has one to three shapes (5 kinds, 8 colours, 2 sizes) on one of 6 gradient backgrounds.
Colours are unique within a scene, so every caption can name an object by colour. Captions say
what is in the picture, and often the size, the background, the count and how two shapes lie
("a large red circle to the left of a small blue square"): a model has to look at colour, shape,
size and position. Everything is a pure function of (seed, split, index): same seed, same data.

The web split's text model (docs/bootstrap.md says why each kind mirrors real alt text): a
fraction `noise_rate` of the images get a text that is not true of them (another image's caption,
generic alt text, a caption with one wrong attribute), a fraction `nondescript_rate` a text that is
true but says little (one of several shapes, "a red shape" / "two shapes", a single word), the
rest a fully descriptive caption. Every kind is assigned to exactly round(rate * n) images.

Relations are stated only when the two centres are at least RELATION_MARGIN of the image apart
along the dominant axis, so they survive small rotations and shears; mirroring the image makes
left/right false, which the input pipeline handles by swapping those words (pipeline.py).
Harsh crops cut shapes out of the picture and RandAugment's Equalize/AutoContrast shift the
colours captions name: train on this data with a milder crop (scale 0.5-1) and without
RandAugment, as configs/pretrain_tiny.py does.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLORS = {
    "red": (215, 35, 35), "green": (30, 160, 50), "blue": (35, 75, 215), "yellow": (240, 215, 30),
    "purple": (135, 50, 180), "orange": (245, 135, 20), "black": (20, 20, 20), "white": (250, 250, 250),
}
BACKGROUNDS = {
    "gray": (160, 160, 160), "beige": (225, 210, 175), "light blue": (175, 205, 235),
    "light green": (185, 220, 180), "dark gray": (60, 60, 65), "pink": (235, 185, 195),
}
SIZES = {"small": 0.095, "large": 0.16}  # shape radius as a fraction of the image side
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
MIN_CONTRAST = 100.0      # RGB distance between a shape colour and its background
RELATION_MARGIN = 0.12    # a stated relation needs centres this far apart (fraction of the side)
RELATION_WORDS = {
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
# The kind of each train_web text, stored as its integer label (the dataset's "noise" feature).
# The order keeps the labels of datasets written before the nondescript kinds existed.
WEB_TEXT_KINDS = ("descriptive", "other_caption", "alt_text", "wrong_attribute",
                  "partial", "hypernym", "one_attribute")
NOISE_KINDS = ("other_caption", "alt_text", "wrong_attribute")     # not true of the image
NONDESCRIPT_KINDS = ("partial", "hypernym", "one_attribute")       # true, but say little
TRUE_KINDS = ("descriptive",) + NONDESCRIPT_KINDS
IS_NOISE = tuple(k in NOISE_KINDS for k in WEB_TEXT_KINDS)  # per label: counts as noise for a filter
# Generic web alt text; none names a colour, a shape or a size, so none is true of a scene.
ALT_TEXTS = (
    "free download hd wallpaper", "stock photo", "image may contain text", "click to enlarge",
    "untitled design", "best price guaranteed, buy now", "hd wallpapers for desktop and mobile",
    "screenshot 2019-03-14 at 10.22.45", "DSC_0417.JPG", "view larger image",
    "logo template for your business", "new arrivals this week", "photo by john smith on unsplash",
    "royalty free vector illustration", "shop now and save 20% off", "home decor ideas for 2020",
    "thumbnail", "cover image", "follow us on social media", "product image 3 of 7",
    "abstract art print poster", "wall art canvas print", "sale ends sunday", "IMG_20180512_153012",
)
SPLIT_CODES = {"train_web": 1, "train_clean": 2, "val": 3, "test": 4}
CAPTIONS_PER_IMAGE = 5  # train_clean, val and test, like COCO


@dataclasses.dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    size: str   # "small" | "large"
    x: float    # centre, pixels
    y: float
    r: float    # radius, pixels


@dataclasses.dataclass(frozen=True)
class Scene:
    image_size: int
    background: str
    gradient: tuple[float, float, float]  # direction (dx, dy) and amplitude of the background shading
    noise_seed: int
    shapes: tuple[Shape, ...]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @staticmethod
    def from_json(text: str) -> "Scene":
        d = json.loads(text)
        return Scene(d["image_size"], d["background"], tuple(d["gradient"]), d["noise_seed"],
                     tuple(Shape(**s) for s in d["shapes"]))


def _distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def sample_scene(rng: np.random.Generator, image_size: int) -> Scene:
    background = str(rng.choice(list(BACKGROUNDS)))
    colors = [c for c, rgb in COLORS.items() if _distance(rgb, BACKGROUNDS[background]) >= MIN_CONTRAST]
    count = int(rng.choice([1, 2, 3], p=[0.25, 0.45, 0.30]))
    gap, margin = 0.06 * image_size, 0.04 * image_size
    while True:  # dense 3-shape draws may not fit; redraw until they do (a handful of tries)
        shapes: list[Shape] = []
        for color in rng.choice(colors, size=count, replace=False):
            size = str(rng.choice(list(SIZES)))
            r = SIZES[size] * image_size * rng.uniform(0.92, 1.08)
            for _ in range(100):
                x, y = rng.uniform(r + margin, image_size - r - margin, size=2)
                if all(math.hypot(x - s.x, y - s.y) > r + s.r + gap for s in shapes):
                    shapes.append(Shape(str(rng.choice(SHAPES)), str(color), size, float(x), float(y), float(r)))
                    break
        if len(shapes) == count:
            break
    angle = rng.uniform(0, 2 * math.pi)
    gradient = (math.cos(angle), math.sin(angle), float(rng.uniform(0, 18)))
    return Scene(image_size, background, gradient, int(rng.integers(2**31)), tuple(shapes))


def _outline(s: Shape, k: float) -> list[tuple[float, float]] | None:
    """Polygon of a shape at supersampling factor k (None: draw as an ellipse)."""
    x, y, r = s.x * k, s.y * k, s.r * k
    if s.kind == "circle":
        return None
    if s.kind == "square":
        h = 0.85 * r
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if s.kind == "triangle":  # equilateral, apex up, centroid at the centre
        return [(x + r * math.cos(a), y - r * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
    if s.kind == "star":  # five points, inner radius 0.45
        return [(x + rr * math.sin(i * math.pi / 5), y - rr * math.cos(i * math.pi / 5))
                for i, rr in zip(range(10), [r, 0.45 * r] * 5)]
    if s.kind == "cross":  # a plus sign, arm half-width 0.4
        a, w = 0.95 * r, 0.4 * r
        return [(x - w, y - a), (x + w, y - a), (x + w, y - w), (x + a, y - w), (x + a, y + w), (x + w, y + w),
                (x + w, y + a), (x - w, y + a), (x - w, y + w), (x - a, y + w), (x - a, y - w), (x - w, y - w)]
    raise ValueError(f"unknown shape kind {s.kind!r}")


def render(scene: Scene, supersample: int = 3) -> Image.Image:
    """The scene as an RGB image: shaded background, anti-aliased shapes, light sensor noise."""
    n, k = scene.image_size, supersample
    coords = (np.arange(n * k) + 0.5) / (n * k) - 0.5
    dx, dy, amp = scene.gradient
    shade = 2 * amp * (dx * coords[None, :] + dy * coords[:, None])  # float64, in [-amp, amp]
    # Each channel: clip(colour + shade) in float64, truncated to uint8, computed one channel at a
    # time straight into the uint8 image rather than broadcasting [n*k, n*k, 1] against 3
    # channels: the same float operations on the same values (the same bytes; pinned by
    # tests/test_data_synthetic.py), ~3x faster (the broadcast was ~75% of render at 96 px).
    # float64 addition is monotonic, so the clip is skipped exactly when no sum leaves [0, 255].
    pixels = np.empty(shade.shape + (3,), np.uint8)
    low, high = shade.min(), shade.max()
    for channel, value in enumerate(map(float, BACKGROUNDS[scene.background])):  # 0-255: exact
        if value + low >= 0 and value + high <= 255:
            np.add(shade, value, out=pixels[..., channel], casting="unsafe")
        else:
            pixels[..., channel] = np.clip(shade + value, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        outline = _outline(s, k)
        if outline is None:
            draw.ellipse([(s.x - s.r) * k, (s.y - s.r) * k, (s.x + s.r) * k, (s.y + s.r) * k], fill=COLORS[s.color])
        else:
            draw.polygon(outline, fill=COLORS[s.color])
    img = img.reduce(k)  # box filter: anti-aliased edges
    noise = np.random.default_rng(scene.noise_seed).normal(0, 3.0, (n, n, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).round().astype(np.uint8))


def encode_jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=0)  # 4:4:4 keeps small shapes' colour
    return buf.getvalue()


# ---- captions ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Mention:
    color: str | None         # None: colour not stated ("a shape", "a star")
    kind: str | None          # None: the hypernym "shape"
    size: str | None = None   # None: size not stated
    size_word: str = ""

    def words(self, definite: bool = False) -> str:
        return " ".join(w for w in (self.size_word if not definite else "", self.color or "",
                                    self.kind or "shape") if w)


@dataclasses.dataclass(frozen=True)
class Relation:
    a: int          # mention indices: "mention a <rel> mention b"
    rel: str        # left | right | above | below
    b: int
    phrase: str


@dataclasses.dataclass(frozen=True)
class Caption:
    """A caption as structure (what it claims) plus the word choices that make its text."""
    template: str
    mentions: tuple[Mention, ...] = ()
    relations: tuple[Relation, ...] = ()
    count: int | None = None
    background: str | None = None

    @property
    def text(self) -> str:
        def np_(i: int, definite: bool = False) -> str:
            words = self.mentions[i].words(definite)
            article = "the" if definite else ("an" if words[0] in "aeiou" else "a")
            return f"{article} {words}"
        fields = {f"m{i}": np_(i) for i in range(len(self.mentions))}
        fields.update({f"d{i}": np_(i, definite=True) for i in range(len(self.mentions))})
        # {b0}: the bare word of a one-attribute text ("red", "star")
        fields.update({f"b{i}": m.color or m.kind or "shape" for i, m in enumerate(self.mentions)})
        fields.update({f"r{i}": r.phrase for i, r in enumerate(self.relations)})
        return self.template.format(bg=self.background, **fields)


# (template, relation pairs (mention a, mention b), states count, states background)
_TEMPLATES = {
    1: [("{m0}", (), False, False), ("there is {m0}", (), False, False),
        ("{m0} on a {bg} background", (), False, True), ("a {bg} background with {m0}", (), False, True),
        ("one shape, {m0}", (), True, False)],
    2: [("{m0} {r0} {m1}", ((0, 1),), False, False), ("{m0} is {r0} {m1}", ((0, 1),), False, False),
        ("{m0} {r0} {m1} on a {bg} background", ((0, 1),), False, True), ("{m0} and {m1}", (), False, False),
        ("two shapes, {m0} and {m1}", (), True, False), ("{m0} and {m1} on a {bg} background", (), False, True)],
    3: [("{m0} {r0} {m1}, and {m2} {r1} {d1}", ((0, 1), (2, 1)), False, False),
        ("{m0} {r0} {m1}", ((0, 1),), False, False), ("{m0}, {m1} and {m2}", (), False, False),
        ("three shapes, {m0}, {m1} and {m2}", (), True, False)],
}


def relation(a: Shape, b: Shape, image_size: int) -> str | None:
    """How a lies relative to b along the dominant axis, or None when not clearly apart."""
    dx, dy = b.x - a.x, b.y - a.y
    if max(abs(dx), abs(dy)) < RELATION_MARGIN * image_size:
        return None
    if abs(dx) >= abs(dy):
        return "left" if dx > 0 else "right"
    return "above" if dy > 0 else "below"


def describe(scene: Scene, rng: np.random.Generator) -> Caption:
    """A random caption that is true of the scene."""
    shapes = scene.shapes
    order = [int(i) for i in rng.permutation(len(shapes))]
    candidates = []
    for template, pairs, has_count, has_bg in _TEMPLATES[len(shapes)]:
        rels = [relation(shapes[order[a]], shapes[order[b]], scene.image_size) for a, b in pairs]
        if all(rels):
            candidates.append((template, pairs, rels, has_count, has_bg))
    template, pairs, rels, has_count, has_bg = candidates[int(rng.integers(len(candidates)))]
    n_mentions = 1 + max(int(i) for i in re.findall(r"\{[md](\d)\}", template))
    mentions = []
    for i in order[:n_mentions]:
        s = shapes[i]
        stated = rng.random() < 0.7
        mentions.append(Mention(s.color, s.kind, s.size if stated else None,
                                str(rng.choice(SIZE_WORDS[s.size])) if stated else ""))
    relations = tuple(Relation(a, rel, b, str(rng.choice(RELATION_WORDS[rel]))) for (a, b), rel in zip(pairs, rels))
    return Caption(template, tuple(mentions), relations, len(shapes) if has_count else None,
                   scene.background if has_bg else None)


def is_true(caption: Caption, scene: Scene) -> bool:
    """Whether some assignment of the mentions to distinct shapes makes every claim hold.

    Relations are judged leniently (any offset in the stated direction), so a caption this calls
    false is false by any reading: that is what noisy captions are checked against.
    """
    if caption.count is not None and caption.count != len(scene.shapes):
        return False
    if caption.background is not None and caption.background != scene.background:
        return False
    options = [[s for s in scene.shapes if m.color in (None, s.color) and m.kind in (None, s.kind)
                and m.size in (None, s.size)] for m in caption.mentions]

    def holds(assign: list[Shape]) -> bool:
        for r in caption.relations:
            a, b = assign[r.a], assign[r.b]
            offset = {"left": b.x - a.x, "right": a.x - b.x, "above": b.y - a.y, "below": a.y - b.y}[r.rel]
            if offset <= 0:
                return False
        return True

    def search(i: int, assign: list[Shape]) -> bool:
        if i == len(options):
            return holds(assign)
        return any(search(i + 1, assign + [s]) for s in options[i] if s not in assign)

    return search(0, [])


_SIZE_OF = {w: size for size, words in SIZE_WORDS.items() for w in words}
_REL_OF = {phrase: rel for rel, phrases in RELATION_WORDS.items() for phrase in phrases}
_COUNT_OF = {"one shape": 1, "a single shape": 1, "two shapes": 2, "three shapes": 3}


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_PIECE = re.compile(
    rf"\b(?:(?:on )?a (?P<bg>{_alternatives(BACKGROUNDS)}) background"
    rf"|(?P<count>{_alternatives(_COUNT_OF)})"
    rf"|(?P<art>a|an|the) (?:(?P<size>{_alternatives(_SIZE_OF)}) )?(?:(?P<color>{_alternatives(COLORS)}) )?"
    rf"(?P<kind>{_alternatives(SHAPES + ('shape',))})"
    rf"|(?:is )?(?P<rel>{_alternatives(_REL_OF)})"
    rf"|(?P<bare>{_alternatives(tuple(COLORS) + SHAPES)})"
    rf"|(?P<filler>there is|in the picture|and|with|shapes))\b")


def parse_caption(text: str) -> Caption | None:
    """The claims of a caption in this data's language (any template above, and texts a
    captioner trained on it writes), or None when some word falls outside that language.

    Lower-cased, '.!?' and the like ignored, commas allowed between phrases. A definite mention
    ("the blue square") refers back to the earlier mention of that colour and kind. The result
    feeds is_true; its template is not meant for rendering.
    """
    text = re.sub(r"[.!?\"()*#:;~]", " ", text.lower())
    mentions: list[Mention] = []
    relations: list[Relation] = []
    count = background = bare = None
    pending: tuple[int, str, str] | None = None  # (mention a, rel, phrase) awaiting mention b
    last, end = None, 0
    for m in _PIECE.finditer(text):
        if text[end:m.start()].strip(" ,"):
            return None  # a word outside the grammar
        end = m.end()
        if m["bg"]:
            background = m["bg"]
        elif m["count"]:
            count = _COUNT_OF[m["count"]]
        elif m["kind"]:
            color, kind = m["color"], None if m["kind"] == "shape" else m["kind"]
            index = None
            if m["art"] == "the":
                index = next((i for i, x in enumerate(mentions) if (x.color, x.kind) == (color, kind)), None)
            if index is None:
                size = _SIZE_OF.get(m["size"] or "")
                mentions.append(Mention(color, kind, size, m["size"] or ""))
                index = len(mentions) - 1
            if pending is not None:
                relations.append(Relation(pending[0], pending[1], index, pending[2]))
                pending = None
            last = index
        elif m["rel"]:
            if last is None or pending is not None:
                return None
            pending = (last, _REL_OF[m["rel"]], m["rel"])
        elif m["bare"]:
            if bare is not None:
                return None
            bare = m["bare"]
    if text[end:].strip(" ,") or pending is not None:
        return None
    if bare is not None:  # a one-word text and nothing else
        if mentions or count or background:
            return None
        mentions = [Mention(bare, None) if bare in COLORS else Mention(None, bare)]
    if not (mentions or count or background):
        return None
    return Caption(text, tuple(mentions), tuple(relations), count, background)


def wrong_attribute(caption: Caption, scene: Scene, rng: np.random.Generator) -> Caption | None:
    """The caption with one attribute (colour, shape, size or relation) changed so it is false."""
    edits = ["color", "kind"] + (["size"] if any(m.size for m in caption.mentions) else [])
    edits += ["relation"] if caption.relations else []
    for _ in range(20):
        edit = str(rng.choice(edits))
        mentions, relations = list(caption.mentions), list(caption.relations)
        if edit == "relation":
            i = int(rng.integers(len(relations)))
            new = OPPOSITE[relations[i].rel]
            relations[i] = dataclasses.replace(relations[i], rel=new, phrase=str(rng.choice(RELATION_WORDS[new])))
        else:
            i = int(rng.choice([j for j, m in enumerate(mentions) if edit != "size" or m.size]))
            m = mentions[i]
            if edit == "color":  # a colour absent from the scene
                used = {s.color for s in scene.shapes}
                m = dataclasses.replace(m, color=str(rng.choice([c for c in COLORS if c not in used])))
            elif edit == "kind":
                m = dataclasses.replace(m, kind=str(rng.choice([k for k in SHAPES if k != m.kind])))
            else:
                size = "small" if m.size == "large" else "large"
                m = dataclasses.replace(m, size=size, size_word=str(rng.choice(SIZE_WORDS[size])))
            mentions[i] = m
        wrong = dataclasses.replace(caption, mentions=tuple(mentions), relations=tuple(relations))
        if not is_true(wrong, scene):
            return wrong
    return None


_COUNT_WORDS = {1: "a single shape", 2: "two shapes", 3: "three shapes"}


def partial(scene: Scene, rng: np.random.Generator) -> Caption:
    """True but partial, like alt text naming only the product in a busy photo: one shape
    (colour and kind, the size half the time), nothing about the others or the layout."""
    s = scene.shapes[int(rng.integers(len(scene.shapes)))]
    stated = rng.random() < 0.5
    m = Mention(s.color, s.kind, s.size if stated else None,
                str(rng.choice(SIZE_WORDS[s.size])) if stated else "")
    return Caption(str(rng.choice(["{m0}", "there is {m0}", "{m0} in the picture"])), (m,))


def hypernym(scene: Scene, rng: np.random.Generator) -> Caption:
    """True but vague, like "a dog" for a golden retriever on a beach: the category "shape"
    for the kinds ("a red shape and a blue shape"), or only how many shapes, or only the
    background."""
    n, form = len(scene.shapes), int(rng.integers(3))
    if form == 0:
        order = [int(i) for i in rng.permutation(n)]
        mentions = tuple(Mention(scene.shapes[i].color, None) for i in order)
        template = {1: "{m0}", 2: "{m0} and {m1}", 3: "{m0}, {m1} and {m2}"}[n]
        return Caption(template, mentions)
    if form == 1:
        return Caption(_COUNT_WORDS[n], count=n)
    if n == 1:
        return Caption("{m0} on a {bg} background", (Mention(None, None),), background=scene.background)
    return Caption("shapes on a {bg} background", background=scene.background)


def one_attribute(scene: Scene, rng: np.random.Generator) -> Caption:
    """One true word, like the single-noun alt text "sunset" or "shoes": the colour or the
    kind of one shape."""
    s = scene.shapes[int(rng.integers(len(scene.shapes)))]
    m = Mention(s.color, None) if rng.random() < 0.5 else Mention(None, s.kind)
    return Caption("{b0}", (m,))


NONDESCRIPT = {"partial": partial, "hypernym": hypernym, "one_attribute": one_attribute}


def web_style(text: str, rng: np.random.Generator) -> str:
    """Web-like surface noise that keeps the meaning (case, punctuation, a prefix); pre_caption
    undoes most of it."""
    style = int(rng.integers(5))
    if style == 1:
        text = text[0].upper() + text[1:] + "."
    elif style == 2:
        text = f"{rng.choice(['photo of', 'image of', 'picture of'])} {text}"
    elif style == 3:
        text = text.title() + str(rng.choice(["!", "!!", " ...", " :)"]))
    elif style == 4:
        text = text.upper()
    return text


# ---- datasets ----------------------------------------------------------------------------------

def check_render_options(image_size: int, seed: int) -> None:
    """The checks every synthetic data config makes of its scene size and seed."""
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 px for shapes to be recognisable, got {image_size}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be a 32-bit non-negative integer, got {seed}")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    num_images: int = 10000         # train_web images (one caption each)
    noise_rate: float = 0.4         # fraction of train_web texts not true of the image (NOISE_KINDS)
    seed: int = 0
    image_size: int = 96            # rendered side; shapes stay visible at the tiny 64 px input
    clean_images: int | None = None  # train_clean images (5 captions each); default num_images // 5
    eval_images: int | None = None   # val and test images each (5 references); default num_images // 10
    nondescript_rate: float = 0.0    # fraction of train_web texts true but nondescript (NONDESCRIPT_KINDS)

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {self.num_images}")
        if not 0.0 <= self.noise_rate <= 1.0:
            raise ValueError(f"noise_rate must be in [0, 1], got {self.noise_rate}")
        if not 0.0 <= self.nondescript_rate <= 1.0 - self.noise_rate + 1e-9:
            raise ValueError(f"nondescript_rate must be in [0, 1 - noise_rate = {1 - self.noise_rate:g}], "
                             f"got {self.nondescript_rate}")
        check_render_options(self.image_size, self.seed)

    def split_sizes(self) -> dict[str, int]:
        clean = self.clean_images if self.clean_images is not None else max(1, self.num_images // 5)
        evals = self.eval_images if self.eval_images is not None else max(1, self.num_images // 10)
        return {"train_web": self.num_images, "train_clean": clean, "val": evals, "test": evals}

    @property
    def name(self) -> str:
        """TFDS config name: every parameter that changes the data is in it."""
        sizes = self.split_sizes()
        extra = "" if (self.clean_images, self.eval_images) == (None, None) else \
            f"_c{sizes['train_clean']}_e{sizes['val']}"
        vague = f"_nd{self.nondescript_rate:g}" if self.nondescript_rate else ""
        return (f"n{self.num_images}_noise{self.noise_rate:g}{vague}_seed{self.seed}_px{self.image_size}"
                f"{extra}")

    def first_image_id(self, split: str) -> int:
        """Image ids are unique across the splits: train_web, train_clean, val, test in turn."""
        sizes, start = self.split_sizes(), 0
        for name in SPLIT_CODES:
            if name == split:
                return start
            start += sizes[name]
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {list(SPLIT_CODES)}")


@dataclasses.dataclass
class Example:
    image_id: int
    image_path: str
    scene: Scene
    captions: list[str]
    noise: int = 0            # index into WEB_TEXT_KINDS (train_web only; 0 = descriptive)
    clean_caption: str = ""   # a true descriptive caption (train_web: what the web text replaced)

    def image_bytes(self) -> bytes:
        return encode_jpeg(render(self.scene))


def scene_at(cfg: SyntheticConfig, split: str, index: int) -> Scene:
    return sample_scene(np.random.default_rng([cfg.seed, SPLIT_CODES[split], index]), cfg.image_size)


def noise_kinds(cfg: SyntheticConfig) -> np.ndarray:
    """WEB_TEXT_KINDS label of each train_web image: exactly round(noise_rate * n) images get a
    noise kind and round(nondescript_rate * n) a nondescript one, the kinds of each group in turn
    (so each kind's count is exact to one); the rest are descriptive."""
    n = cfg.num_images
    kinds = np.zeros(n, np.int32)
    order = np.random.default_rng([cfg.seed, SPLIT_CODES["train_web"], 2**31]).permutation(n)
    noisy = order[:round(cfg.noise_rate * n)]
    vague = order[len(noisy):len(noisy) + round(cfg.nondescript_rate * n)]
    for chosen, group in ((noisy, NOISE_KINDS), (vague, NONDESCRIPT_KINDS)):
        labels = np.array([WEB_TEXT_KINDS.index(k) for k in group], np.int32)
        kinds[chosen] = labels[np.arange(len(chosen)) % len(group)]
    return kinds


def _distinct_captions(scene: Scene, rng: np.random.Generator, n: int) -> list[str]:
    texts: list[str] = []
    for _ in range(20 * n):  # small scenes have few distinct phrasings: allow repeats after that
        text = describe(scene, rng).text
        if text not in texts:
            texts.append(text)
        if len(texts) == n:
            return texts
    return texts + [describe(scene, rng).text for _ in range(n - len(texts))]


def generate(cfg: SyntheticConfig, split: str) -> Iterator[Example]:
    """Examples of one split in index order (images rendered lazily by Example.image_bytes)."""
    first_id, code = cfg.first_image_id(split), SPLIT_CODES[split]
    kinds = noise_kinds(cfg) if split == "train_web" else None
    for i in range(cfg.split_sizes()[split]):
        scene = scene_at(cfg, split, i)
        rng = np.random.default_rng([cfg.seed, code, i, 1])
        path = f"{split}/{i:06d}.jpg"
        if kinds is None:
            captions = _distinct_captions(scene, rng, CAPTIONS_PER_IMAGE)
            yield Example(first_id + i, path, scene, captions, 0, captions[0])
            continue
        clean = describe(scene, rng)
        kind, text = WEB_TEXT_KINDS[int(kinds[i])], None
        if kind == "other_caption":
            for _ in range(20):  # another image's true caption, if it is false here
                j = int(rng.integers(cfg.num_images - 1))
                j += j >= i
                donor = describe(scene_at(cfg, split, j), np.random.default_rng([cfg.seed, code, j, 1]))
                if not is_true(donor, scene):
                    text = donor.text
                    break
            if text is None:  # a tiny split where every other caption also fits: change an attribute
                kind = "wrong_attribute"
        if kind == "wrong_attribute":
            wrong = wrong_attribute(clean, scene, rng)
            text = wrong.text if wrong is not None else None
            kind = kind if wrong is not None else "alt_text"
        if kind == "alt_text":
            text = str(rng.choice(ALT_TEXTS))
        if kind in NONDESCRIPT:
            text = NONDESCRIPT[kind](scene, rng).text
        if kind == "descriptive":
            text = clean.text
        yield Example(first_id + i, path, scene, [web_style(text, rng)], WEB_TEXT_KINDS.index(kind), clean.text)
