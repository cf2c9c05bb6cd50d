"""Synthetic VQA: questions with checkable answers about the rendered shape scenes of synthetic.py,
so the VQA task has a learning test on CPU and its answers can be scored against ground truth.

Question types (QUESTION_TYPES), each asked only when its answer is certain for the scene:
- color: "what color is the star?" / "... the big circle?" (only a shape the words pick out
  uniquely), "what color is the background?" (a quarter of them; answers gray/grey);
- shape: "what shape is the red object?" (colours are unique within a scene);
- count: "how many shapes are there?", "how many circles are there?" (half of the kinds asked
  about are absent: answer 0), "how many big shapes are there?"; answers are digits;
- size: "is the star big or small?" (big/small), "what size is the red star?" (large/small);
- presence: "is there a red circle?", "is there a star?" / "are there any stars?"; yes or no by
  a fair coin, half of the no's a near miss (a colour of the scene on another kind, or a kind of
  the scene in another colour);
- relation: "is the red circle left of the square?" (yes or no by a coin: the true direction or
  its opposite), "is the circle to the left or to the right of the square?" (either order).
  Asked only when synthetic.relation() states the pair (centres RELATION_MARGIN apart along the
  dominant axis), the rule the captions use, so mirroring + swapping left/right keeps every
  answer true.
Types are drawn per image without replacement with TYPE_WEIGHTS (relation weighted up because a
third of scenes cannot have it): 16-18% each (measured over 300 val images, seed 0). Answer
types as VQA v2's: yes/no 27% (presence, yes/no relation), number 16% (count), other 57%.
Majority-answer baselines on those val questions with train (2000 images) as the reference
(majority_baseline): one answer for all ("yes") 13.3%, per question type 33.6%, per question
text 35.3%.

Annotators: every question has 10 answers like VQA v2's. WRONG_ANNOTATORS gives how many of the
10 answer wrongly (0, 1, 2, 3 with p 0.6, 0.25, 0.1, 0.05; a wrong answer is a plausible one of
the same kind: another colour, a count off by one, the other of yes/no); each correct annotator
uses a synonym (SYNONYMS: "2"/"two", "big"/"large", "gray"/"grey", "yes"/"yeah", ...) with
SYNONYM_RATES by answer type. Synonyms never outnumber the canonical answer, so the canonical
answer is always the strict majority and scores 1 under VQA accuracy, min(1, matches / 3),
while a minority answer scores partial credit.

Everything is a pure function of (seed, split, index); split seeds are disjoint from each other
and from synthetic.py's caption splits. `true_answer(scene, question)` reads a question back
from its words alone, so tests check answers against scenes measured from pixels.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
from collections.abc import Iterator, Sequence

import numpy as np

from blip_jax.data import synthetic
from blip_jax.data.synthetic import BACKGROUNDS, COLORS, OPPOSITE, SHAPES, SIZE_WORDS, Scene, Shape
from blip_jax.data.synthetic_splits import SplitsMixin

QUESTION_TYPES = ("color", "shape", "count", "size", "presence", "relation")
TYPE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.6)
SPLIT_CODES = {"train": 11, "val": 12, "test": 13}  # synthetic.py's caption splits use 1-4
NUM_ANNOTATORS = 10
WRONG_ANNOTATORS = (0.6, 0.25, 0.1, 0.05)  # P(0, 1, 2, 3 of the 10 answer wrongly)
SYNONYM_RATES = {"number": 0.3, "yes/no": 0.05, "other": 0.15}  # per correct annotator
SYNONYMS = {"0": ("zero", "none"), "1": ("one",), "2": ("two",), "3": ("three",), "yes": ("yeah",),
            "big": ("large",), "large": ("big",), "small": ("little",), "gray": ("grey",),
            "dark gray": ("dark grey",), "circle": ("round",), "cross": ("plus",), "purple": ("violet",)}
RELATION_PHRASES = {"left": ("left of", "to the left of"), "right": ("right of", "to the right of"),
                    "above": ("above",), "below": ("below",)}
MAX_COUNT = 3  # scenes hold 1-3 shapes


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith("s") else "s")


def _alt(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_SIZE_OF = {w: size for size, words in SIZE_WORDS.items() for w in words}
_KIND_OF = {**{k: k for k in SHAPES}, **{_plural(k): k for k in SHAPES}}


def _ref(p: str) -> str:
    """A definite description: "the [size] [colour] kind|object"; groups prefixed by p."""
    return (rf"the (?:(?P<{p}size>{_alt(_SIZE_OF)}) )?(?:(?P<{p}color>{_alt(COLORS)}) )?"
            rf"(?P<{p}kind>{_alt(SHAPES + ('object',))})")


_REL_OF = {phrase: rel for rel, phrases in RELATION_PHRASES.items() for phrase in phrases}
_FORMS = [(form, re.compile(pattern)) for form, pattern in (
    ("background", r"what colou?r is the background"),
    ("color", rf"what colou?r is {_ref('a')}"),
    ("shape", rf"what shape is {_ref('a')}"),
    ("shape", rf"what is the shape of {_ref('a')}"),
    ("count", rf"how many (?:(?P<size>{_alt(_SIZE_OF)}) |(?P<color>{_alt(COLORS)}) )?"
              rf"(?P<kinds>{_alt(tuple(_KIND_OF) + ('shapes',))}) are there"),
    ("big_or_small", rf"is {_ref('a')} big or small"),
    ("size", rf"what size is {_ref('a')}"),
    ("presence", rf"(?:is there an? |are there any )(?:(?P<size>{_alt(_SIZE_OF)}) )?(?:(?P<color>{_alt(COLORS)}) )?"
                 rf"(?P<kinds>{_alt(tuple(_KIND_OF) + ('shape', 'shapes'))})"),
    ("relation", rf"is {_ref('a')} (?P<rel>{_alt(_REL_OF)}) {_ref('b')}"),
    ("left_or_right", rf"is {_ref('a')} to the (?:left or to the right|right or to the left) of {_ref('b')}"),
    ("above_or_below", rf"is {_ref('a')} above or below {_ref('b')}"),
)]
# The answers each form can have: wrong annotators pick from these; answer_list() unites them.
ANSWER_SPACE = {
    "background": tuple(BACKGROUNDS), "color": tuple(COLORS), "shape": SHAPES,
    "count": tuple(str(n) for n in range(MAX_COUNT + 1)), "big_or_small": ("big", "small"),
    "size": ("large", "small"), "presence": ("yes", "no"), "relation": ("yes", "no"),
    "left_or_right": ("left", "right"), "above_or_below": ("above", "below"),
}


def _matches(scene: Scene, size: str | None, color: str | None, kind: str | None) -> list[Shape]:
    kind = None if kind in (None, "object", "shape", "shapes") else _KIND_OF[kind]
    return [s for s in scene.shapes if (size is None or s.size == _SIZE_OF[size])
            and color in (None, s.color) and kind in (None, s.kind)]


def _unique(scene: Scene, m: re.Match, p: str) -> Shape | None:
    found = _matches(scene, m[p + "size"], m[p + "color"], m[p + "kind"])
    return found[0] if len(found) == 1 else None


def parse_question(question: str) -> tuple[str, re.Match] | None:
    """(form, match) of a question in this data's language, or None."""
    text = question.lower().strip().rstrip("?").strip()
    for form, pattern in _FORMS:
        m = pattern.fullmatch(text)
        if m:
            return form, m
    return None


def true_answer(scene: Scene, question: str) -> str | None:
    """The canonical answer to `question` about `scene`, from the words alone; None when the
    question is outside the language, names no unique shape, or asks a relation the scene does
    not state with a margin (synthetic.relation)."""
    parsed = parse_question(question)
    if parsed is None:
        return None
    form, m = parsed
    if form == "background":
        return scene.background
    if form in ("count", "presence"):
        n = len(_matches(scene, m["size"], m["color"], m["kinds"]))
        return str(n) if form == "count" else ("yes" if n else "no")
    a = _unique(scene, m, "a")
    if a is None:
        return None
    if form in ("color", "shape"):
        return a.color if form == "color" else a.kind
    if form in ("big_or_small", "size"):
        return {"large": "big" if form == "big_or_small" else "large", "small": "small"}[a.size]
    b = _unique(scene, m, "b")
    rel = synthetic.relation(a, b, scene.image_size) if b is not None and b is not a else None
    if rel is None:
        return None
    if form == "relation":
        asked = _REL_OF[m["rel"]]
        return "yes" if asked == rel else "no" if asked == OPPOSITE[rel] else None
    return rel if rel in ANSWER_SPACE[form] else None


def answer_type(answer: str) -> str:
    """VQA v2's answer types: yes/no, number, other."""
    return "yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other"


def answer_list(cfg: "SyntheticVqaConfig | None" = None) -> list[str]:
    """Every answer an annotator of this data can give (canonical answers and synonyms), sorted.
    The same for every config (cfg is accepted so callers need not care)."""
    del cfg
    answers = {a for space in ANSWER_SPACE.values() for a in space}
    return sorted(answers | {s for a in answers for s in SYNONYMS.get(a, ())})


# ---- question generation --------------------------------------------------------------------

def _article(words: str) -> str:
    return "an" if words[0] in "aeiou" else "a"


def _describe(scene: Scene, s: Shape, rng: np.random.Generator, *, color: bool = True, kind: bool = True,
              size: bool = True) -> str | None:
    """A description that picks out s alone, using only the allowed attributes; None if none does."""
    options = []
    for use_size, use_color, use_kind in ((0, 0, 1), (0, 1, 1), (1, 0, 1), (0, 1, 0)):
        if (use_size and not size) or (use_color and not color) or (use_kind and not kind):
            continue
        size_word = str(rng.choice(SIZE_WORDS[s.size])) if use_size else None
        found = _matches(scene, size_word, s.color if use_color else None, s.kind if use_kind else None)
        if found == [s]:
            options.append(" ".join(w for w in (size_word, use_color and s.color, s.kind if use_kind else "object")
                                    if w))
    return "the " + str(rng.choice(options)) if options else None


def _ask(scene: Scene, qtype: str, rng: np.random.Generator) -> str | None:
    """One question of the type whose answer the scene determines, or None if it has none."""
    shapes, pick = scene.shapes, lambda seq: seq[int(rng.integers(len(seq)))]
    if qtype == "color":
        refs = [r for s in shapes if (r := _describe(scene, s, rng, color=False))]
        if not refs or rng.random() < 0.25:
            return "what color is the background?"
        return f"what color is {pick(refs)}?"
    if qtype == "shape":
        ref = _describe(scene, pick(shapes), rng, kind=False)
        return str(rng.choice(["what shape is {}?", "what is the shape of {}?"])).format(ref) if ref else None
    if qtype == "count":
        form = int(rng.integers(3))
        if form == 0:
            return "how many shapes are there?"
        if form == 1:  # half the time a kind that may be absent
            kind = pick(shapes).kind if rng.random() < 0.5 else str(rng.choice(SHAPES))
            return f"how many {_plural(kind)} are there?"
        return f"how many {rng.choice(SIZE_WORDS[str(rng.choice(list(SIZE_WORDS)))])} shapes are there?"
    if qtype == "size":
        ref = _describe(scene, pick(shapes), rng, size=False)
        return str(rng.choice(["is {} big or small?", "what size is {}?"])).format(ref) if ref else None
    if qtype == "presence":
        with_color, s = rng.random() < 0.7, pick(shapes)
        color, kind = s.color, s.kind
        if rng.random() < 0.5:  # a no: half of them a near miss (one attribute of s changed)
            near = with_color and rng.random() < 0.5
            for _ in range(50):
                if near and rng.random() < 0.5:
                    color, kind = str(rng.choice(list(COLORS))), s.kind
                elif near:
                    color, kind = s.color, str(rng.choice(SHAPES))
                else:
                    color, kind = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
                if not _matches(scene, None, color if with_color else None, kind):
                    break
        if not with_color:
            return f"are there any {_plural(kind)}?" if rng.random() < 0.5 else f"is there {_article(kind)} {kind}?"
        return f"is there {_article(color)} {color} {kind}?"
    if qtype == "relation":
        pairs = [(a, b) for a in shapes for b in shapes if a is not b and synthetic.relation(a, b, scene.image_size)]
        if not pairs:
            return None
        a, b = pick(pairs)
        rel = synthetic.relation(a, b, scene.image_size)
        ra, rb = _describe(scene, a, rng), _describe(scene, b, rng)
        if rng.random() < 0.4:  # both orders, so mirroring + swapping left/right keeps the distribution
            sides = "left or to the right" if rng.random() < 0.5 else "right or to the left"
            return f"is {ra} to the {sides} of {rb}?" if rel in ("left", "right") else f"is {ra} above or below {rb}?"
        asked = rel if rng.random() < 0.5 else OPPOSITE[rel]
        return f"is {ra} {rng.choice(RELATION_PHRASES[asked])} {rb}?"
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")


def annotate(question: str, answer: str, rng: np.random.Generator) -> list[str]:
    """Ten annotator answers: the canonical one, synonyms, a minority of wrong ones (see module doc)."""
    form = parse_question(question)[0]
    wrong_pool = [a for a in ANSWER_SPACE[form] if a != answer and a not in SYNONYMS.get(answer, ())]
    if form == "count":  # miscounts are off by one
        wrong_pool = [a for a in wrong_pool if abs(int(a) - int(answer)) == 1]
    n_wrong = int(rng.choice(len(WRONG_ANNOTATORS), p=WRONG_ANNOTATORS))
    correct = NUM_ANNOTATORS - n_wrong
    synonyms = SYNONYMS.get(answer, ())
    n_syn = min(int(rng.binomial(correct, SYNONYM_RATES[answer_type(answer)])), (correct - 1) // 2) if synonyms else 0
    answers = ([answer] * (correct - n_syn) + [str(rng.choice(synonyms)) for _ in range(n_syn)]
               + [str(rng.choice(wrong_pool)) for _ in range(n_wrong)])
    return [answers[i] for i in rng.permutation(NUM_ANNOTATORS)]


@dataclasses.dataclass(frozen=True)
class SyntheticVqaConfig(SplitsMixin):
    num_images: int = 2000           # train images
    eval_images: int | None = None   # val and test images each; default num_images // 10
    questions_per_image: int = 3
    image_size: int = 96             # as synthetic.SyntheticConfig
    seed: int = 0

    def __post_init__(self) -> None:
        self._check_splits()
        if not 1 <= self.questions_per_image <= 10:
            raise ValueError(f"questions_per_image must be in [1, 10], got {self.questions_per_image}")

    @property
    def name(self) -> str:
        """TFDS config name: every parameter that changes the data is in it."""
        return (f"n{self.num_images}_e{self.split_sizes()['val']}_q{self.questions_per_image}_seed{self.seed}"
                f"_px{self.image_size}")

    def first_image_id(self, split: str) -> int:
        """Image ids are unique across splits (train, val, test in turn)."""
        return self._first_id(split, "VQA")


@dataclasses.dataclass(frozen=True)
class Question:
    question_id: int   # image_id * 1000 + number within the image (VQA v2's scheme)
    question: str
    answer: str        # canonical
    answers: tuple[str, ...]  # the 10 annotator answers
    question_type: str  # one of QUESTION_TYPES
    answer_type: str    # yes/no | number | other


@dataclasses.dataclass
class Example:
    image_id: int
    image_path: str
    scene: Scene
    questions: list[Question]

    def image_bytes(self) -> bytes:
        return synthetic.encode_jpeg(synthetic.render(self.scene))


def example_at(cfg: SyntheticVqaConfig, split: str, index: int) -> Example:
    code = SPLIT_CODES[split]
    scene = synthetic.sample_scene(np.random.default_rng([cfg.seed, code, index]), cfg.image_size)
    rng = np.random.default_rng([cfg.seed, code, index, 1])
    image_id = cfg.first_image_id(split) + index
    p = np.asarray(TYPE_WEIGHTS) / sum(TYPE_WEIGHTS)
    order = [QUESTION_TYPES[int(t)] for t in rng.choice(len(QUESTION_TYPES), len(QUESTION_TYPES), replace=False, p=p)]
    questions: list[Question] = []
    # The types in their drawn order (a type the scene cannot have is passed over), then more
    # draws if the image needs more questions than that gives.
    extra = (order[int(rng.integers(len(order)))] for _ in range(100 * cfg.questions_per_image))
    for qtype in itertools.chain(order, extra):
        if len(questions) == cfg.questions_per_image:
            break
        text = _ask(scene, qtype, rng)
        if text is None or any(q.question == text for q in questions):
            continue
        answer = true_answer(scene, text)
        assert answer is not None, (text, scene)  # _ask only asks what the scene determines
        questions.append(Question(image_id * 1000 + len(questions), text, answer,
                                  tuple(annotate(text, answer, rng)), qtype, answer_type(answer)))
    return Example(image_id, f"{split}/{index:06d}.jpg", scene, questions)


def generate(cfg: SyntheticVqaConfig, split: str) -> Iterator[Example]:
    """Examples of one split in index order (images rendered lazily by Example.image_bytes)."""
    for i in range(cfg.split_sizes()[split]):
        yield example_at(cfg, split, i)


def majority_baseline(questions: Sequence[Question], reference: Sequence[Question] | None = None,
                      by: str | None = None) -> float:
    """Fraction of `questions` whose canonical answer equals the most common canonical answer of
    `reference` (default: the same questions): over all questions (by=None), per question_type
    (by="question_type"), or per question text (by="question": the language-only prior; a text
    unseen in reference falls back to the overall answer). What a model must beat to show it looks."""
    reference = questions if reference is None else reference
    overall = collections.Counter(q.answer for q in reference).most_common(1)[0][0]
    prior: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    if by is not None:
        for q in reference:
            prior[getattr(q, by)][q.answer] += 1
    right = sum(q.answer == (prior[getattr(q, by)].most_common(1)[0][0] if by and getattr(q, by) in prior
                             else overall) for q in questions)
    return right / max(1, len(questions))
