"""Synthetic video: short clips of synthetic.py's shape scenes in which one thing happens, with
captions (retrieval) and questions (video QA) whose truth over the clip is checkable, so the
zero-shot video evaluations have a ground-truth test on CPU.

Clips: `frames` (16) frames at FPS (8), rendered at 96 px, synthetic.SyntheticConfig's size (the
image-trained tiny models saw these scenes at 96 px resized to their 64 px input, as the video
pipeline resizes these frames); one scene (background, shading, one sensor-noise pattern for
every frame: each frame has the images' noise, and the lossless file is ~30 KB instead of
~180 KB) and one event per clip, EVENT_KINDS in exact thirds of each split (a seeded
permutation):
- move: one shape (two, half the time, in a scene with two or three) travels in a straight line
  at constant speed, at least MIN_TRAVEL of the side, never touching another shape;
- appear: one shape of a scene with two or three is absent until a frame in [T/4, 3T/4];
- change: one shape takes another colour from a frame in [T/4, 3T/4] on (a colour no other shape
  of the clip has, contrasting with the background, so colours still name shapes uniquely).
Why: each event makes a single frame insufficient in its own way. appear and change put content
in later frames only (what a model that looks at the first frame, or too few frames, misses);
move keeps the content and changes the layout (a relation true in part of the clip must not be
stated). One event per clip keeps results attributable per kind (the `event` of each record).

Text: the image data's languages unchanged (synthetic.py captions, synthetic_vqa.py questions), so
image-trained models read them and synthetic.parse_caption / synthetic_vqa.parse_question read any
text back. Truth over the clip:
- A caption is true of the clip (caption_true_of_clip) when synthetic.is_true holds on every frame
  in which each shape it mentions is present (and there is such a frame). Captions are described
  from a random frame (synthetic.describe) and kept when true of the clip and when each relation
  they state holds with synthetic.relation's margin on every frame showing both shapes (so a pixel
  measurement agrees).
- A question's answer over the clip (clip_answer) is its answer on the last frame, asked only when
  no frame contradicts it: presence and count may only grow over the clip (a shape that appears, or
  a colour a shape takes, is in the clip: "is there a star?" yes); every other form needs the shapes
  it names present and unambiguous from some frame to the end, with the same answer on all those
  frames ("what color is the circle?" is not asked when the circle turns from red to blue; "what
  shape is the blue object?" is).
- late_only: a caption not true of the first frame, a question whose answer from the first frame
  alone is another or none. In an appear or change clip the first question is a late-only one,
  asked about a frame after the event (50 draws; all 200 such clips of the measurement below got
  one); its flag lets evaluation score those questions apart.
Measured over 300 test clips (seed 0, the defaults): late_only questions 35%, captions 36%;
question types color 13%, shape 19%, count 18%, size 17%, presence 16%, relation 17%; answer
types yes/no 26%, number 18%, other 56%. Blind baselines on those questions (synthetic_vqa.majority_baseline):
one answer for all 13.4%, per question type 35.7% (late-only questions: 19.0%, 41.3%).

Annotators: 10 answers per question as synthetic_vqa.annotate. Splits val and test only: the
evaluation is zero-shot (image-trained models). Everything is a pure function of (seed, split,
index); split seeds (SPLIT_CODES) are disjoint from the other synthetic modules'.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator, Sequence

import numpy as np

from blip_jax.data import synthetic, synthetic_vqa as sv
from blip_jax.data.synthetic import COLORS, Caption, Mention, Scene, Shape
from blip_jax.data.video import encode_video

FPS = 8
EVENT_KINDS = ("move", "appear", "change")
# synthetic.py uses 1-4, vision_init 5, synthetic_vqa.py 11-13, synthetic_nlvr.py 21-23
SPLIT_CODES = {"val": 31, "test": 32}
MIN_TRAVEL = 0.3  # a moving shape's path, as a fraction of the side: clearly visible motion
_GAP, _MARGIN = 0.06, 0.04  # as synthetic.sample_scene: between shapes, to the border (of the side)
_LATE_EVENTS = ("appear", "change")


@dataclasses.dataclass(frozen=True)
class Track:
    """One shape over the clip."""
    shape: Shape          # kind, size, radius, first colour, centre at frame 0
    end_x: float          # centre at the last frame (= shape.x, shape.y unless it moves)
    end_y: float
    start: int = 0        # first frame it is in (appear)
    new_color: str = ""   # its colour from frame color_from on (change); "" = none
    color_from: int = 0

    def at(self, t: int, num_frames: int) -> Shape | None:
        """The shape in frame t, None before it appears; positions interpolate linearly."""
        if t < self.start:
            return None
        a = t / (num_frames - 1)
        color = self.new_color if self.new_color and t >= self.color_from else self.shape.color
        return dataclasses.replace(self.shape, color=color, x=self.shape.x + a * (self.end_x - self.shape.x),
                                   y=self.shape.y + a * (self.end_y - self.shape.y))


@dataclasses.dataclass(frozen=True)
class Clip:
    image_size: int
    background: str
    gradient: tuple[float, float, float]
    noise_seed: int              # one sensor-noise pattern for every frame
    tracks: tuple[Track, ...]
    num_frames: int
    event: str                   # one of EVENT_KINDS
    event_frame: int             # appear / change: the first frame showing it; move: 0

    def frame(self, t: int) -> Scene:
        shapes = (tr.at(t, self.num_frames) for tr in self.tracks)
        return Scene(self.image_size, self.background, self.gradient, self.noise_seed,
                     tuple(s for s in shapes if s is not None))

    def frames(self) -> list[Scene]:
        return [self.frame(t) for t in range(self.num_frames)]

    def render(self) -> np.ndarray:
        """uint8 [num_frames, image_size, image_size, 3]."""
        return np.stack([np.asarray(synthetic.render(s)) for s in self.frames()])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @staticmethod
    def from_json(text: str) -> "Clip":
        d = json.loads(text)
        tracks = tuple(Track(**{**t, "shape": Shape(**t["shape"])}) for t in d.pop("tracks"))
        return Clip(**{**d, "gradient": tuple(d["gradient"]), "tracks": tracks})


# ---- clips ----------------------------------------------------------------------------------------

def _apart(tracks: Sequence[Track], num_frames: int, gap: float) -> bool:
    """No two shapes come within `gap` of touching in any frame."""
    for t in range(num_frames):
        shapes = [s for tr in tracks if (s := tr.at(t, num_frames)) is not None]
        for a, b in itertools.combinations(shapes, 2):
            if math.hypot(a.x - b.x, a.y - b.y) <= a.r + b.r + gap:
                return False
    return True


def _with_event(scene: Scene, event: str, num_frames: int, rng: np.random.Generator) -> Clip | None:
    """The scene's clip with `event`, or None when this scene cannot have it."""
    n, size = len(scene.shapes), scene.image_size
    tracks = [Track(s, s.x, s.y) for s in scene.shapes]
    when = int(rng.integers(num_frames // 4, 3 * num_frames // 4 + 1))
    event_frame = 0
    if event == "move":
        movers = rng.choice(n, 2 if n >= 2 and rng.random() < 0.5 else 1, replace=False)
        for i in (int(i) for i in movers):
            s, others = tracks[i].shape, tracks[:i] + tracks[i + 1:]
            for _ in range(100):
                x, y = rng.uniform(s.r + _MARGIN * size, size - s.r - _MARGIN * size, size=2)
                moved = dataclasses.replace(tracks[i], end_x=float(x), end_y=float(y))
                if math.hypot(x - s.x, y - s.y) >= MIN_TRAVEL * size and _apart([moved, *others], num_frames,
                                                                                   _GAP * size):
                    tracks[i] = moved
                    break
            else:
                return None
    elif event == "appear":
        if n < 2:
            return None
        i = int(rng.integers(n))
        tracks[i], event_frame = dataclasses.replace(tracks[i], start=when), when
    elif event == "change":
        used = {s.color for s in scene.shapes}
        free = [c for c, rgb in COLORS.items() if c not in used
                and synthetic._distance(rgb, synthetic.BACKGROUNDS[scene.background]) >= synthetic.MIN_CONTRAST]
        if not free:
            return None
        i = int(rng.integers(n))
        tracks[i] = dataclasses.replace(tracks[i], new_color=str(rng.choice(free)), color_from=when)
        event_frame = when
    else:
        raise ValueError(f"unknown event {event!r}; expected one of {EVENT_KINDS}")
    return Clip(size, scene.background, scene.gradient, scene.noise_seed, tuple(tracks), num_frames, event,
                event_frame)


def make_clip(rng: np.random.Generator, image_size: int, num_frames: int, event: str) -> Clip:
    """A clip with `event` on a scene of synthetic.sample_scene (redrawn until it can have it)."""
    while True:
        clip = _with_event(synthetic.sample_scene(rng, image_size), event, num_frames, rng)
        if clip is not None:
            return clip


# ---- truth over the clip ------------------------------------------------------------------------

def _present(m: Mention, scene: Scene) -> bool:
    return any(m.color in (None, s.color) and m.kind in (None, s.kind) and m.size in (None, s.size)
               for s in scene.shapes)


def caption_true_of_clip(caption: Caption, frames: Sequence[Scene]) -> bool:
    """synthetic.is_true on every frame in which each shape the caption mentions is present, and
    there is such a frame (a caption without mentions: every frame)."""
    support = [s for s in frames if all(_present(m, s) for m in caption.mentions)]
    return bool(support) and all(synthetic.is_true(caption, s) for s in support)


def _relations_clear(caption: Caption, frames: Sequence[Scene]) -> bool:
    """Each stated relation is synthetic.relation's (with its margin) on every frame showing both
    shapes; mentions are found by colour (generated captions always name it)."""
    for scene in frames:
        by_color = {s.color: s for s in scene.shapes}
        for r in caption.relations:
            a, b = by_color.get(caption.mentions[r.a].color), by_color.get(caption.mentions[r.b].color)
            if a is not None and b is not None and synthetic.relation(a, b, scene.image_size) != r.rel:
                return False
    return True


_GROWING = ("count", "presence")  # forms whose answer may grow over the clip


def clip_answer(frames: Sequence[Scene], question: str) -> str | None:
    """The canonical answer to `question` over the clip (module doc), or None when the question is
    outside synthetic_vqa's language or the clip does not determine one answer."""
    parsed = sv.parse_question(question)
    if parsed is None:
        return None
    form, m = parsed
    answers = [sv.true_answer(s, question) for s in frames]
    if form in _GROWING:
        values = [int(a) if form == "count" else int(a == "yes") for a in answers]
        return answers[-1] if all(x <= y for x, y in zip(values, values[1:])) else None
    refs = [p for p in ("a", "b") if f"{p}kind" in m.re.groupindex]
    present = []
    for s in frames:
        found = [len(sv._matches(s, m[p + "size"], m[p + "color"], m[p + "kind"])) for p in refs]
        if any(k > 1 for k in found):
            return None  # "the circle" with two circles in view
        present.append(all(k == 1 for k in found))
    if not present[-1]:
        return None
    first = len(present) - present[::-1].index(False) if False in present else 0
    support = answers[first:]
    return support[0] if support[0] is not None and all(a == support[0] for a in support) else None


def question_late_only(frames: Sequence[Scene], question: str, answer: str) -> bool:
    """Whether the first frame alone answers `question` otherwise than `answer` (or not at all)."""
    return sv.true_answer(frames[0], question) != answer


# ---- datasets -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SyntheticVideoConfig:
    clips: int = 100                 # val and test clips each (MSRVTT 1k-A: 1000 videos)
    frames: int = 16                 # per clip, at FPS
    captions_per_clip: int = 1       # retrieval texts (MSRVTT 1k-A: 1 per video)
    questions_per_clip: int = 3
    image_size: int = 96             # rendered side, as synthetic.SyntheticConfig
    seed: int = 0

    def __post_init__(self) -> None:
        if self.clips < 1:
            raise ValueError(f"clips must be >= 1, got {self.clips}")
        if not 4 <= self.frames <= 256:
            raise ValueError(f"frames must be in [4, 256] (events need frames before and after them), "
                             f"got {self.frames}")
        if not 1 <= self.captions_per_clip <= 5 or not 1 <= self.questions_per_clip <= 10:
            raise ValueError(f"captions_per_clip must be in [1, 5] and questions_per_clip in [1, 10], got "
                             f"{self.captions_per_clip}, {self.questions_per_clip}")
        synthetic.check_render_options(self.image_size, self.seed)
        if self.image_size % 2:
            raise ValueError(f"image_size must be even for the video codecs, got {self.image_size}")

    @property
    def name(self) -> str:
        """TFDS config name: every parameter that changes the data is in it."""
        return (f"c{self.clips}_f{self.frames}_cap{self.captions_per_clip}_q{self.questions_per_clip}"
                f"_seed{self.seed}_px{self.image_size}")

    def first_clip_id(self, split: str) -> int:
        """Clip ids are unique across splits (val, then test)."""
        if split not in SPLIT_CODES:
            raise ValueError(f"unknown synthetic video split {split!r}; expected one of {list(SPLIT_CODES)}")
        return list(SPLIT_CODES).index(split) * self.clips


@dataclasses.dataclass(frozen=True)
class Question(sv.Question):
    late_only: bool = False  # the first frame alone answers it otherwise, or not at all


@dataclasses.dataclass
class Example:
    clip_id: int
    video_id: str             # "test/000003"
    clip: Clip
    captions: list[str]
    caption_late_only: list[bool]
    questions: list[Question]

    @property
    def video_path(self) -> str:
        return f"{self.video_id}.mp4"

    def video_bytes(self) -> bytes:
        return encode_video(self.clip.render(), FPS)


def event_kinds(cfg: SyntheticVideoConfig, split: str) -> list[str]:
    """The event of each clip of the split: EVENT_KINDS in turn over a seeded permutation, so each
    kind's count is exact to one."""
    order = np.random.default_rng([cfg.seed, SPLIT_CODES[split], 2**31]).permutation(cfg.clips)
    kinds = [""] * cfg.clips
    for rank, i in enumerate(order):
        kinds[int(i)] = EVENT_KINDS[rank % len(EVENT_KINDS)]
    return kinds


def _captions(frames: list[Scene], n: int, rng: np.random.Generator) -> list[tuple[str, bool]]:
    """n captions true of the clip (distinct while the clip has enough), with their late_only."""
    found: list[tuple[str, bool]] = []
    for _ in range(200 * n):
        scene = frames[int(rng.integers(len(frames)))]
        caption = synthetic.describe(scene, rng)
        if caption.text in (text for text, _ in found):
            continue
        if caption_true_of_clip(caption, frames) and _relations_clear(caption, frames):
            found.append((caption.text, not synthetic.is_true(caption, frames[0])))
            if len(found) == n:
                return found
    assert found, frames  # a one-mention caption of the last frame is always true of the clip
    return found + [found[i % len(found)] for i in range(n - len(found))]


def _ask(clip: Clip, frames: list[Scene], qtype: str, first: int,
         rng: np.random.Generator) -> tuple[str, str, str, bool] | None:
    """(question, answer, question type, late_only) asked about a random frame from `first` on, if
    the clip determines its answer."""
    scene = frames[int(rng.integers(first, clip.num_frames))]
    text = sv._ask(scene, qtype, rng) if scene.shapes else None
    answer = clip_answer(frames, text) if text is not None else None
    return None if answer is None else (text, answer, qtype, question_late_only(frames, text, answer))


def example_at(cfg: SyntheticVideoConfig, split: str, index: int, event: str | None = None) -> Example:
    code = SPLIT_CODES[split]
    event = event or event_kinds(cfg, split)[index]
    clip = make_clip(np.random.default_rng([cfg.seed, code, index]), cfg.image_size, cfg.frames, event)
    rng = np.random.default_rng([cfg.seed, code, index, 1])
    frames = clip.frames()
    captions = _captions(frames, cfg.captions_per_clip, rng)
    clip_id = cfg.first_clip_id(split) + index
    p = np.asarray(sv.TYPE_WEIGHTS) / sum(sv.TYPE_WEIGHTS)
    types = sv.QUESTION_TYPES
    asked: list[tuple[str, str, str, bool]] = []
    if clip.event in _LATE_EVENTS:  # first a question only the frames after the event answer
        for _ in range(50):
            got = _ask(clip, frames, types[int(rng.choice(len(types), p=p))], clip.event_frame, rng)
            if got is not None and got[3]:
                asked.append(got)
                break
    # Then the types in a drawn order (a type the clip cannot have is passed over), then more draws.
    order = [types[int(t)] for t in rng.choice(len(types), len(types), replace=False, p=p)]
    extra = (order[int(rng.integers(len(order)))] for _ in range(100 * cfg.questions_per_clip))
    for qtype in itertools.chain(order, extra):
        if len(asked) == cfg.questions_per_clip:
            break
        got = _ask(clip, frames, qtype, 0, rng)
        if got is not None and all(got[0] != q[0] for q in asked):
            asked.append(got)
    questions = [Question(clip_id * 1000 + j, text, answer, tuple(sv.annotate(text, answer, rng)), qtype,
                          sv.answer_type(answer), late) for j, (text, answer, qtype, late) in enumerate(asked)]
    return Example(clip_id, f"{split}/{index:06d}", clip, [t for t, _ in captions], [late for _, late in captions],
                   questions)


def generate(cfg: SyntheticVideoConfig, split: str) -> Iterator[Example]:
    """Examples of one split in index order (clips rendered and encoded by Example.video_bytes)."""
    kinds = event_kinds(cfg, split)
    for i in range(cfg.clips):
        yield example_at(cfg, split, i, kinds[i])
