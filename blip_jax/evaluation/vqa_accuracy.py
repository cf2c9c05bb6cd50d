"""VQA accuracy exactly as the official VQA v2 evaluation tool computes it.

Reference: GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py (the version after the
2021 commit "Fixed processing answers bug"). Its quirks are reproduced on purpose, since the point
is numbers comparable with the evaluation server's:

* Answers are always whitespace-cleaned (newline/tab -> space, strip). The punctuation and
  digit/article processing is applied to the ground truth *and to the prediction* only when the
  question's cleaned ground-truth answers are not all identical. For a unanimous question the
  prediction is compared raw: "Yes" scores 0 against ten "yes". Normalise predictions with
  `normalize_answer` before scoring/submitting (BLIP's decoder output is lower-case anyway).
* The period rule's pattern `(?!<=\\d)(\\.)(?!\\d)` was meant to be a look-behind but is a
  look-ahead that always holds at a '.', so it means "a period not followed by a digit"; and the
  tool passes re.UNICODE (== 32) where re.sub takes `count`, so at most 32 periods are removed.
* One digit-comma-digit anywhere ("1,000") makes every punctuation mark be deleted, not spaced.
* Contraction keys with capitals ("Im", "Ive", "Id've", "I'dve") can never match: the lookup
  happens after lower-casing. They are kept so that the table is the tool's.

(LAVIS ships the pre-2021 tool: prediction always fully processed, ground truth only
punctuation-processed when not unanimous. Scores can differ slightly; this module follows the
official repository.)
"""

from __future__ import annotations

import json
import re
from typing import Mapping, Sequence

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")
_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")  # what the tool's pattern actually matches (see above)
_MAX_PERIODS_REMOVED = 32  # int(re.UNICODE), which the tool passes as re.sub's count
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
# The tool's whole contractions table as `key=value` tokens (no token holds '=' or whitespace).
# Note the tool's odd entries: identities ("let's", "she's") and one reversed ("somebody'd").
_CONTRACTIONS = dict(token.split("=") for token in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
someonell=someone'll someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
""".split())
_DECIMALS = 2  # the tool's default rounding of the reported percentages


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    # Whether a mark is deleted or replaced by a space is decided on the input text, per mark:
    # deleted if any occurrence touches a space ("yes, it is") or if the text has a
    # digit-comma-digit anywhere; otherwise spaced ("t-shirt" -> "t shirt").
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        touches_space = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if delete_all or touches_space else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS_REMOVED)


def _process_digit_article(text: str) -> str:
    # Word by word, after lower-casing (hence the dead capitalised contraction keys).
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def _process(text: str) -> str:
    return _process_digit_article(_process_punctuation(text))


def normalize_answer(answer: str) -> str:
    """The tool's full processing of an answer: whitespace cleaning, punctuation, then lower-case,
    number words -> digits, articles dropped, contractions restored (e.g. "Two dogs." -> "2 dogs",
    "dont know" -> "don't know")."""
    return _process(_clean_whitespace(answer))


def question_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the question's (usually 10) human answers, in [0, 1]:
    the mean over leave-one-annotator-out subsets of min(1, #matching answers in the subset / 3).
    Processing is applied only when the ground truth is not unanimous (module docstring)."""
    if isinstance(gt_answers, str) or not gt_answers:
        raise ValueError(f"gt_answers must be a non-empty sequence of strings, got {gt_answers!r}")
    gts = [_clean_whitespace(a) for a in gt_answers]
    pred = _clean_whitespace(prediction)
    if len(set(gts)) > 1:
        gts = [_process(a) for a in gts]
        pred = _process(pred)
    matches = sum(a == pred for a in gts)
    # Leaving answer i out removes one match exactly when answer i itself matches. (The tool leaves
    # out by dict inequality; VQA answer dicts carry distinct answer_ids, so that is one answer.)
    per_subset = [min(1.0, (matches - (a == pred)) / 3) for a in gts]
    return sum(per_subset) / len(per_subset)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no question id


def _ids_preview(ids, limit: int = 5) -> str:
    ids = sorted(ids)
    more = f" ... ({len(ids)} in all)" if len(ids) > limit else ""
    return ", ".join(map(str, ids[:limit])) + more


def _percent(accuracies: Sequence[float]) -> float:
    return round(100 * sum(accuracies) / len(accuracies), _DECIMALS)


def evaluate(predictions: Mapping[int, str], ground_truth: Mapping[int, Sequence[str]],
             question_types: Mapping[int, str] | None = None) -> dict:
    """Mean VQA accuracy over questions, as a percentage rounded to 2 decimals like the tool.

    Returns {"overall": float, "num_questions": int} plus "per_type": {type: float} when
    `question_types` (answer types or question types, question id -> type) is given. Every
    ground-truth question needs a prediction and vice versa (and a type, if types are given):
    anything unmatched is a ValueError naming the ids, never silently dropped.
    """
    missing = set(ground_truth) - set(predictions)
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question(s): {_ids_preview(missing)}")
    extra = set(predictions) - set(ground_truth)
    if extra:
        raise ValueError(f"predictions for {len(extra)} question(s) with no ground truth: "
                         f"{_ids_preview(extra)}")
    if not ground_truth:
        raise ValueError("no questions to evaluate")
    if question_types is not None and set(question_types) != set(ground_truth):
        untyped = set(ground_truth) - set(question_types)
        unknown = set(question_types) - set(ground_truth)
        raise ValueError(f"question_types must cover exactly the evaluated questions: "
                         f"no type for [{_ids_preview(untyped)}], "
                         f"no ground truth for [{_ids_preview(unknown)}]")
    qids = sorted(ground_truth)
    accs = {q: question_accuracy(predictions[q], ground_truth[q]) for q in qids}
    result = {"overall": _percent([accs[q] for q in qids]), "num_questions": len(qids)}
    if question_types is not None:
        by_type: dict[str, list[float]] = {}
        for q in qids:
            by_type.setdefault(question_types[q], []).append(accs[q])
        result["per_type"] = {t: _percent(v) for t, v in sorted(by_type.items())}
    return result


def write_results(path: str, predictions: Mapping[int, str]) -> None:
    """Writes the results file the VQA v2 evaluation server accepts:
    [{"question_id": int, "answer": str}, ...], sorted by question_id."""
    for qid, answer in predictions.items():
        if not _is_int(qid) or not isinstance(answer, str):
            raise TypeError(f"expected int question id -> str answer, got {qid!r} -> {answer!r}")
    rows = [{"question_id": q, "answer": predictions[q]} for q in sorted(predictions)]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False)


def load_results(path: str) -> dict[int, str]:
    """Reads a results file in the `write_results` format back to {question_id: answer}."""
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of {{question_id, answer}} objects")
    results: dict[int, str] = {}
    duplicates = set()
    for row in rows:
        if not (isinstance(row, dict) and _is_int(row.get("question_id"))
                and isinstance(row.get("answer"), str)):
            raise ValueError(f"{path}: malformed entry {row!r}")
        if row["question_id"] in results:
            duplicates.add(row["question_id"])
        results[row["question_id"]] = row["answer"]
    if duplicates:
        raise ValueError(f"{path}: duplicate question ids: {_ids_preview(duplicates)}")
    return results
