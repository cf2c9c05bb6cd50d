"""Synthetic NLVR2: true/false statements about a PAIR of the rendered shape scenes of
synthetic.py (the left image = image 0, the right = image 1), so the two-image task has a
learning test on CPU and its labels can be checked against ground truth.

Statement templates (TEMPLATES; each with 2-4 phrasings, PHRASINGS), drawn uniformly without
replacement per pair, so 1/7 = 14.3% each (a pair that cannot take a planned template after
PAIR_TRIES draws gets another one; none did in 1000 val pairs); measured over those 2000 val
statements (seed 0): side_has 14.6%, side_count 12.9%, count_compare 14.7%, same_count 14.4%,
both 14.5%, exactly_one 14.1%, neither 15.0%:
- side_has: "the left image contains a big circle", "there is a red shape in the right image";
- side_count: "the right image has exactly two shapes", "there is exactly one shape in the
  left image";
- count_compare: "the left image has more shapes than the right image", "there are fewer
  shapes in the right image than in the left image";
- same_count: "the two images have the same number of shapes";
- both: "both images contain a red shape", "there is a star in both images";
- exactly_one: "there is a star in exactly one image", "only one of the images has a blue
  triangle";
- neither: "neither image has a green shape", "there is no big cross in either image".
Shapes are named by colour ("a red shape"), kind ("a star"), colour and kind ("a blue
triangle") or size and kind ("a big circle"), a quarter each. SyntheticNlvrConfig.templates
and .descriptions narrow the task to some templates and ways of naming (the tiny recipe: colour
only, which a 64 px two-layer ViT perceives; the defaults, everything above, keep the dataset's
name). 3/7 of the statements name a side
(side_has, side_count, count_compare), so the pair swap of the input pipeline (images swapped,
the words left/right swapped) matters; none states where shapes lie within an image, so
mirroring one image never changes a label.

Labels are balanced: each pair's statements are half true (an odd count's extra one is true
for one pair of each two consecutive ones), so every split is 50/50 exactly or within one. A
statement's words are fixed before the scenes are looked at (template, phrasing, side, more or
fewer, how shapes are named) and its label is drawn independently, so each template, phrasing
and side has both labels equally often; then the second scene is drawn (up to PAIR_TRIES times,
the first one anew after every FIRST_SCENE_TRIES) until every planned statement can take its
label, and the named shape is taken from the pair
where the label allows: a false "the left image contains X" names a shape of the right image,
a true "both images contain X" one they share, a false one a shape of only one of them (near
misses, so false statements are not told apart by their words or by a glance at one image).
The count words of side_count come from the pair too (a false count is the other image's).
Measured over those val statements with train (2000 pairs) as the reference: majority label
per template 50.4%, per sentence text 50.9% (majority_baseline); every template 44-56% true
(binomial noise of about 290 statements each around the planned 50%).

Everything is a pure function of (seed, split, index); split seeds (SPLIT_CODES) are disjoint
from synthetic.py's caption splits and synthetic_vqa.py's. `true_label(scene0, scene1,
statement)` reads a statement back from its words alone, so tests check labels against scenes
measured from pixels.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import string
from collections.abc import Iterator, Sequence

import numpy as np

from blip_jax.data import synthetic
from blip_jax.data.synthetic import COLORS, SHAPES, SIZE_WORDS, SIZES, Scene, Shape
from blip_jax.data.synthetic_splits import SplitsMixin

TEMPLATES = ("side_has", "side_count", "count_compare", "same_count", "both", "exactly_one", "neither")
SIDED = ("side_has", "side_count", "count_compare")  # templates whose words name the left or right image
DESC_TEMPLATES = ("side_has", "both", "exactly_one", "neither")  # templates that name a shape
DESC_TYPES = ("color", "kind", "color_kind", "size_kind")  # how a shape is named
PHRASINGS = {
    "side_has": ("the {side} image contains {d}", "the {side} image has {d}", "there is {d} in the {side} image"),
    "side_count": ("the {side} image has exactly {n} {shapes}", "the {side} image contains exactly {n} {shapes}",
                   "there {be} exactly {n} {shapes} in the {side} image"),
    "count_compare": ("the {side} image has {cmp} shapes than the {other} image",
                      "there are {cmp} shapes in the {side} image than in the {other} image"),
    "same_count": ("the two images have the same number of shapes", "both images contain the same number of shapes",
                   "the images have the same number of shapes"),
    "both": ("both images contain {d}", "both images have {d}", "there is {d} in both images",
             "each image contains {d}"),
    "exactly_one": ("exactly one image contains {d}", "there is {d} in exactly one image",
                    "only one of the images has {d}"),
    "neither": ("neither image contains {d}", "neither image has {d}", "there is no {bare} in either image"),
}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}  # scenes hold 1-3 shapes
SPLIT_CODES = {"train": 21, "val": 22, "test": 23}  # synthetic.py uses 1-4, synthetic_vqa.py 11-13
PAIR_TRIES = 200  # draws of the second scene to fit a pair's planned statements ...
FIRST_SCENE_TRIES = 20  # ... the first scene redrawn after each this many
SIDES = ("left", "right")
_OTHER = {"left": "right", "right": "left"}


# ---- statements as structure ------------------------------------------------------------------

_SIZE_OF = {w: size for size, words in SIZE_WORDS.items() for w in words}
_COUNT_OF = {w: n for n, w in NUMBER_WORDS.items()}


@dataclasses.dataclass(frozen=True)
class Desc:
    """A shape as a statement names it: any of size, colour and kind (None: not said)."""
    size: str | None = None   # "small" | "large"
    color: str | None = None
    kind: str | None = None   # None: the word "shape"
    size_word: str = ""       # the word used for the size ("big", "little", ...)

    def words(self) -> str:
        return " ".join(w for w in (self.size_word or self.size or "", self.color or "", self.kind or "shape") if w)

    def matches(self, s: Shape) -> bool:
        return self.size in (None, s.size) and self.color in (None, s.color) and self.kind in (None, s.kind)

    def in_scene(self, scene: Scene) -> bool:
        return any(self.matches(s) for s in scene.shapes)


@dataclasses.dataclass(frozen=True)
class Claim:
    """What a statement says: its template and the slots of its words."""
    template: str
    phrasing: int = 0        # index into PHRASINGS[template]
    side: str = ""           # side_has, side_count: the image; count_compare: the image named first
    desc: Desc | None = None  # the desc templates
    count: int = 0           # side_count
    more: bool = True        # count_compare: "more" (True) or "fewer"

    @property
    def text(self) -> str:
        words = self.desc.words() if self.desc else ""
        fields = {"side": self.side, "other": _OTHER.get(self.side, ""), "bare": words,
                  "d": f"{'an' if words[:1] in tuple('aeiou') else 'a'} {words}" if words else "",
                  "n": NUMBER_WORDS.get(self.count, ""), "shapes": "shape" if self.count == 1 else "shapes",
                  "be": "is" if self.count == 1 else "are", "cmp": "more" if self.more else "fewer"}
        return PHRASINGS[self.template][self.phrasing].format(**fields)


def _alt(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_DESC = (rf"(?:(?P<size>{_alt(_SIZE_OF)}) )?(?:(?P<color>{_alt(COLORS)}) )?"
         rf"(?P<kind>{_alt(SHAPES + ('shape',))})")
_FIELDS = {"side": r"(?P<side>left|right)", "other": r"(?P<other>left|right)", "d": rf"an? {_DESC}", "bare": _DESC,
           "n": rf"(?P<n>{_alt(_COUNT_OF)})", "shapes": "shapes?", "be": "(?:is|are)", "cmp": "(?P<cmp>more|fewer)"}


def _pattern(phrasing: str) -> re.Pattern:
    """The regular expression of a phrasing: its words literally, each {field} by _FIELDS."""
    return re.compile("".join(re.escape(literal) + (_FIELDS[field] if field else "")
                              for literal, field, _, _ in string.Formatter().parse(phrasing)))


_FORMS = [(t, k, _pattern(p)) for t, phrasings in PHRASINGS.items() for k, p in enumerate(phrasings)]


def parse_statement(statement: str) -> Claim | None:
    """The claim of a statement in this data's language (also after pre_caption), or None."""
    text = " ".join(statement.lower().replace(".", " ").split())
    for template, k, pattern in _FORMS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        groups = m.groupdict()
        if groups.get("other") is not None and groups["other"] == groups["side"]:
            return None  # "the left image has more shapes than the left image"
        desc = None
        if groups.get("kind") is not None:
            size_word = groups["size"] or ""
            desc = Desc(_SIZE_OF.get(size_word), groups["color"], None if groups["kind"] == "shape" else groups["kind"],
                        size_word)
        return Claim(template, k, groups.get("side") or "", desc, _COUNT_OF.get(groups.get("n") or "", 0),
                     groups.get("cmp") != "fewer")
    return None


def claim_holds(claim: Claim, scene0: Scene, scene1: Scene) -> bool:
    """Whether the claim is true of the pair (scene0 on the left)."""
    scenes = {"left": scene0, "right": scene1}
    t = claim.template
    if t == "side_has":
        return claim.desc.in_scene(scenes[claim.side])
    if t == "side_count":
        return len(scenes[claim.side].shapes) == claim.count
    if t == "count_compare":
        a, b = len(scenes[claim.side].shapes), len(scenes[_OTHER[claim.side]].shapes)
        return a > b if claim.more else a < b
    if t == "same_count":
        return len(scene0.shapes) == len(scene1.shapes)
    in0, in1 = claim.desc.in_scene(scene0), claim.desc.in_scene(scene1)
    if t == "both":
        return in0 and in1
    if t == "exactly_one":
        return in0 != in1
    if t == "neither":
        return not (in0 or in1)
    raise ValueError(f"unknown template {t!r}; expected one of {TEMPLATES}")


def true_label(scene0: Scene, scene1: Scene, statement: str) -> bool | None:
    """Whether `statement` is true of the pair (scene0 = the left image), read from its words
    alone; None when the statement is outside this data's language."""
    claim = parse_statement(statement)
    return None if claim is None else claim_holds(claim, scene0, scene1)


# ---- generation -------------------------------------------------------------------------------

def _descs(desc_type: str) -> list[Desc]:
    if desc_type == "color":
        return [Desc(color=c) for c in COLORS]
    if desc_type == "kind":
        return [Desc(kind=k) for k in SHAPES]
    if desc_type == "color_kind":
        return [Desc(color=c, kind=k) for c in COLORS for k in SHAPES]
    if desc_type == "size_kind":
        return [Desc(size=s, kind=k) for s in SIZES for k in SHAPES]
    raise ValueError(f"unknown desc type {desc_type!r}; expected one of {DESC_TYPES}")


@dataclasses.dataclass(frozen=True)
class _Slot:
    """A planned statement: its words but the shape or count named, and its label."""
    claim: Claim
    desc_type: str
    label: bool


def _plan_slot(template: str, label: bool, rng: np.random.Generator,
               desc_types: Sequence[str] = DESC_TYPES) -> _Slot:
    claim = Claim(template, int(rng.integers(len(PHRASINGS[template]))),
                  str(rng.choice(SIDES)) if template in SIDED else "")
    more = bool(rng.random() < 0.5)
    if template == "count_compare":
        claim = dataclasses.replace(claim, more=more)
    return _Slot(claim, str(rng.choice(desc_types)) if template in DESC_TEMPLATES else "", label)


def _options(slot: _Slot, scene0: Scene, scene1: Scene, strict: bool) -> list[Claim]:
    """The claims of the slot's words that have its label for this pair. strict: only those
    naming a shape that is in the pair (near misses), for the templates where one can."""
    claim, t = slot.claim, slot.claim.template
    if t in ("count_compare", "same_count"):
        return [claim] if claim_holds(claim, scene0, scene1) == slot.label else []
    if t == "side_count":
        scenes = {"left": scene0, "right": scene1}
        mine, theirs = len(scenes[claim.side].shapes), len(scenes[_OTHER[claim.side]].shapes)
        counts = [mine] if slot.label else [theirs] if theirs != mine else [n for n in NUMBER_WORDS if n != mine]
        return [dataclasses.replace(claim, count=n) for n in counts]
    fits = [c for c in (dataclasses.replace(claim, desc=d) for d in _descs(slot.desc_type))
            if claim_holds(c, scene0, scene1) == slot.label]
    grounded = [c for c in fits if c.desc.in_scene(scene0) or c.desc.in_scene(scene1)]
    if t == "neither":  # a true "neither" names what is absent: nothing in the pair to prefer
        return fits
    return grounded if grounded or strict else fits


@dataclasses.dataclass(frozen=True)
class Statement:
    identifier: str  # "<split>-<pair index>-<statement index>"
    sentence: str
    label: bool
    template: str    # one of TEMPLATES


@dataclasses.dataclass
class Example:
    pair_id: int
    image_paths: tuple[str, str]  # left, right
    scenes: tuple[Scene, Scene]
    statements: list[Statement]

    def image_bytes(self) -> tuple[bytes, bytes]:
        return tuple(synthetic.encode_jpeg(synthetic.render(s)) for s in self.scenes)  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class SyntheticNlvrConfig(SplitsMixin):
    num_images: int = 2000           # train pairs
    eval_images: int | None = None   # val and test pairs each; default num_images // 10
    statements_per_pair: int = 2     # NLVR2 has up to two sentences per pair
    image_size: int = 96             # as synthetic.SyntheticConfig
    seed: int = 0
    templates: tuple[str, ...] = TEMPLATES      # the statement templates drawn (TEMPLATES)
    descriptions: tuple[str, ...] = DESC_TYPES  # how statements may name a shape (DESC_TYPES)

    def __post_init__(self) -> None:
        self._check_splits()
        for field, allowed in (("templates", TEMPLATES), ("descriptions", DESC_TYPES)):
            value = tuple(getattr(self, field))
            object.__setattr__(self, field, value)
            if not value or any(v not in allowed for v in value) or len(set(value)) < len(value):
                raise ValueError(f"{field} must be a non-empty subset of {allowed} without repeats, "
                                 f"got {value}")
        if not 1 <= self.statements_per_pair <= len(self.templates):
            raise ValueError(f"statements_per_pair must be in [1, {len(self.templates)}] (one per template), "
                             f"got {self.statements_per_pair}")

    @property
    def name(self) -> str:
        """TFDS config name: every parameter that changes the data is in it."""
        # Only choices away from the defaults are named, so the default task keeps its name.
        templates = "" if self.templates == TEMPLATES else "_t" + "-".join(self.templates)
        descriptions = "" if self.descriptions == DESC_TYPES else "_d" + "-".join(self.descriptions)
        return (f"n{self.num_images}_e{self.split_sizes()['val']}_s{self.statements_per_pair}_seed{self.seed}"
                f"_px{self.image_size}{templates}{descriptions}")

    def first_pair_id(self, split: str) -> int:
        """Pair ids are unique across splits (train, val, test in turn)."""
        return self._first_id(split, "NLVR")


def _labels(cfg: SyntheticNlvrConfig, code: int, index: int, rng: np.random.Generator) -> list[bool]:
    """Half of the pair's statements true; an odd count's extra one true for one of each two
    consecutive pairs (which one: a coin per couple), so a split is balanced within one."""
    k = cfg.statements_per_pair
    labels = [True] * (k // 2) + [False] * (k // 2)
    if k % 2:
        coin = np.random.default_rng([cfg.seed, code, index // 2, 9]).random() < 0.5
        labels.append(bool(coin) != bool(index % 2))
    return [labels[int(i)] for i in rng.permutation(k)]


def example_at(cfg: SyntheticNlvrConfig, split: str, index: int) -> Example:
    code = SPLIT_CODES[split]
    plan_rng = np.random.default_rng([cfg.seed, code, index, 0])
    templates = [cfg.templates[int(i)]
                 for i in plan_rng.choice(len(cfg.templates), cfg.statements_per_pair, replace=False)]
    slots = [_plan_slot(t, label, plan_rng, cfg.descriptions)
             for t, label in zip(templates, _labels(cfg, code, index, plan_rng))]
    # The scenes: the second drawn until every planned statement can take its label for the
    # pair; a first scene that keeps failing (one shape, when the left must have more) is redrawn.
    first_rng, second_rng = (np.random.default_rng([cfg.seed, code, index, i]) for i in (1, 2))
    scene0 = synthetic.sample_scene(first_rng, cfg.image_size)
    best, best_fit = (scene0, scene0), -1
    for attempt in range(1, PAIR_TRIES + 1):
        scene1 = synthetic.sample_scene(second_rng, cfg.image_size)
        fit = sum(bool(_options(s, scene0, scene1, strict=True)) for s in slots)
        if fit > best_fit:
            best, best_fit = (scene0, scene1), fit
        if fit == len(slots):
            break
        if attempt % FIRST_SCENE_TRIES == 0:
            scene0 = synthetic.sample_scene(first_rng, cfg.image_size)
    scene0, scene1 = best
    rng = np.random.default_rng([cfg.seed, code, index, 3])
    statements: list[Statement] = []
    for k, slot in enumerate(slots):
        options = _options(slot, scene0, scene1, strict=False)
        if not options:  # this pair cannot take the template with this label: another one can
            spare = [t for t in cfg.templates if t not in templates]
            for t in (spare[int(i)] for i in rng.permutation(len(spare))):
                options = _options(_plan_slot(t, slot.label, rng, cfg.descriptions), scene0, scene1,
                                   strict=False)
                if options:
                    templates.append(t)
                    break
        claim = options[int(rng.integers(len(options)))]
        if claim.desc is not None and claim.desc.size is not None:
            claim = dataclasses.replace(claim, desc=dataclasses.replace(
                claim.desc, size_word=str(rng.choice(SIZE_WORDS[claim.desc.size]))))
        text = claim.text
        assert true_label(scene0, scene1, text) == slot.label, (text, slot, scene0, scene1)
        statements.append(Statement(f"{split}-{index}-{k}", text, slot.label, claim.template))
    pair_id = cfg.first_pair_id(split) + index
    return Example(pair_id, (f"{split}/{index:06d}-img0.jpg", f"{split}/{index:06d}-img1.jpg"), (scene0, scene1),
                   statements)


def generate(cfg: SyntheticNlvrConfig, split: str) -> Iterator[Example]:
    """Examples of one split in index order (images rendered lazily by Example.image_bytes)."""
    for i in range(cfg.split_sizes()[split]):
        yield example_at(cfg, split, i)


def majority_baseline(statements: Sequence[Statement], reference: Sequence[Statement] | None = None,
                      by: str | None = None) -> float:
    """Fraction of `statements` whose label equals the majority label of `reference` (default:
    the same statements): overall (by=None), per template (by="template") or per sentence text
    (by="sentence": what the words alone tell; a text unseen in reference gets the overall
    majority). What a model must beat to show it looks at the images."""
    reference = statements if reference is None else reference
    overall = collections.Counter(s.label for s in reference).most_common(1)[0][0]
    prior: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    if by is not None:
        for s in reference:
            prior[getattr(s, by)][s.label] += 1

    def guess(s: Statement) -> bool:
        counts = prior.get(getattr(s, by)) if by is not None else None
        if not counts or counts[True] == counts[False]:
            return overall
        return counts[True] > counts[False]
    return sum(guess(s) == s.label for s in statements) / max(1, len(statements))
