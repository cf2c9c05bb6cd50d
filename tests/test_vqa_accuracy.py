"""VQA accuracy (official VQA v2 tool semantics) on hand-built cases; every expected value is
derived by hand in the comment next to it. The optional cross-check runs the official tool itself
when VQA_EVAL_REFERENCE points at a copy of GT-Vision-Lab/VQA's
PythonEvaluationTools/vqaEvaluation/vqaEval.py (not vendored here); it is skipped otherwise."""

import json
import os
import random
import re

import pytest

from blip_jax.evaluation.vqa_accuracy import (evaluate, load_results, normalize_answer,
                                              question_accuracy, write_results)

# Ten answers, `k` of which are "2" and the rest "3": not unanimous (for k < 10), so processed.
def _mixed(k):
    return ["2"] * k + ["3"] * (10 - k)


# --- question_accuracy: leave-one-out average of min(1, matches among the other 9 / 3) ----------

@pytest.mark.parametrize("k, expected", [
    (0, 0.0),  # no subset has a match
    (1, 0.3),  # 9 subsets keep the match: 1/3; 1 drops it: 0 -> (9 * 1/3 + 1 * 0) / 10 = 0.3
    (2, 0.6),  # 8 subsets keep both: 2/3; 2 keep one: 1/3 -> (8 * 2/3 + 2 * 1/3) / 10 = 0.6
    (3, 0.9),  # 7 subsets keep all 3: 1; 3 keep two: 2/3 -> (7 * 1 + 3 * 2/3) / 10 = 0.9
    (4, 1.0),  # every subset keeps >= 3 matches -> 1
    (9, 1.0),
])
def test_leave_one_out_counts(k, expected):
    assert question_accuracy("2", _mixed(k)) == pytest.approx(expected)


def test_unanimous_and_short_answer_lists():
    assert question_accuracy("yes", ["yes"] * 10) == 1.0  # every subset has 9 matches
    assert question_accuracy("no", ["yes"] * 10) == 0.0
    # Three answers, all matching: each subset keeps 2 -> min(1, 2/3) = 2/3 on average too.
    assert question_accuracy("yes", ["yes"] * 3) == pytest.approx(2 / 3)
    # One answer: the only subset is empty -> 0, even for an exact match.
    assert question_accuracy("yes", ["yes"]) == 0.0


def test_question_accuracy_rejects_empty_or_string_ground_truth():
    with pytest.raises(ValueError):
        question_accuracy("yes", [])
    with pytest.raises(ValueError):
        question_accuracy("yes", "yes")  # a str is a Sequence[str]; almost surely a bug


# --- normalisation --------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    # whitespace: newline/tab -> space, strip, and the word split/join collapses runs
    ("\tyes\n", "yes"),
    ("red\tand\nblue", "red and blue"),
    ("  lots   of  space ", "lots of space"),
    # number words (only none..ten), lower-cased first; "none" counts as 0
    ("Two", "2"), ("none", "0"), ("ZERO", "0"), ("ten", "10"), ("eleven", "eleven"),
    ("no one", "no 1"),  # word by word, even inside phrases
    # articles dropped (whole words only)
    ("A dog", "dog"), ("an apple", "apple"), ("the", ""), ("theater", "theater"),
    ("the one", "1"),  # "one" -> "1" first, then "the" dropped
    # contractions restored, after lower-casing
    ("dont", "don't"), ("Isnt", "isn't"), ("wont", "won't"), ("oclock", "o'clock"),
    ("Im", "im"),  # the table's "Im" key can never match after lower-casing
    ("somebody'd", "somebodyd"),  # the table maps this one backwards
    # periods: removed unless followed by a digit
    ("yes.", "yes"), ("3.5", "3.5"), ("3.", "3"), ("Mr. T", "mr t"), ("a.b", "ab"),
    ("." * 40, "." * 8),  # only the first 32 go: the tool passes re.UNICODE (32) as `count`
    # punctuation: spaced when it touches no space, deleted when it does
    ("t-shirt", "t shirt"), ("t - shirt", "t shirt"), ("rock-n-roll", "rock n roll"),
    ("yes, it is", "yes it is"), ("1,b", "1 b"), ("who's?", "who's"),
    # any digit-comma-digit makes every mark be deleted, not spaced
    ("1,000", "1000"), ("1,000 t-shirts", "1000 tshirts"),
    # marks outside the tool's list are kept
    ("10:30", "10:30"), ("don't", "don't"), ("rock&roll", "rock&roll"), ("50%", "50%"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


# --- when the processing applies: only for questions whose answers are not all the same --------

def test_unanimous_ground_truth_is_compared_raw():
    # Ten "yes": unanimous, so neither side is processed; only whitespace is cleaned.
    assert question_accuracy("Yes", ["yes"] * 10) == 0.0  # "Yes" != "yes"
    assert question_accuracy("yes.", ["yes"] * 10) == 0.0  # "yes." != "yes"
    assert question_accuracy(" yes\n", ["yes"] * 10) == 1.0  # whitespace is always cleaned
    assert question_accuracy(normalize_answer("Yes."), ["yes"] * 10) == 1.0
    # Unanimity is judged after whitespace cleaning: "yes\t" == "yes" -> still unanimous.
    assert question_accuracy("Yes", ["yes"] * 5 + ["yes\t"] * 5) == 0.0
    # Raw ground truth is not normalised either: "Two" (unnormalised) against ten "Two".
    assert question_accuracy("2", ["Two"] * 10) == 0.0
    assert question_accuracy("Two", ["Two"] * 10) == 1.0


def test_mixed_ground_truth_processes_both_sides():
    # 9 "yes" + 1 "Yes": not unanimous -> all processed to "yes"; "Yes." -> "yes" matches 10 -> 1.
    assert question_accuracy("Yes.", ["yes"] * 9 + ["Yes"]) == 1.0
    # 5 "two" + 5 "2" -> all "2"; "Two" -> "2": 10 matches -> 1.
    assert question_accuracy("Two", ["two"] * 5 + ["2"] * 5) == 1.0
    # "the dog" x2, "dogs" x8 -> "dog" x2: prediction "A dog" -> "dog", 2 matches -> 0.6 (above).
    assert question_accuracy("A dog", ["the dog"] * 2 + ["dogs"] * 8) == pytest.approx(0.6)


# --- evaluate -----------------------------------------------------------------------------------

GT = {1: ["yes"] * 10,  # "yes" -> 1.0
      2: _mixed(2),  # "2" -> 0.6
      3: ["blue"] * 10}  # "red" -> 0.0
PRED = {1: "yes", 2: "2", 3: "red"}


def test_evaluate_overall_and_per_type():
    # overall: 100 * (1.0 + 0.6 + 0.0) / 3 = 53.333... -> 53.33 (2 decimals, as the tool)
    # yes/no: q1 -> 100.0; other: q2, q3 -> 100 * (0.6 + 0.0) / 2 = 30.0
    types = {1: "yes/no", 2: "other", 3: "other"}
    assert evaluate(PRED, GT, types) == {"overall": 53.33, "num_questions": 3,
                                          "per_type": {"other": 30.0, "yes/no": 100.0}}
    assert evaluate(PRED, GT) == {"overall": 53.33, "num_questions": 3}
    # Three unanimous answers, exact match: 2/3 -> 66.666... -> 66.67
    assert evaluate({7: "yes"}, {7: ["yes"] * 3})["overall"] == 66.67


def test_evaluate_errors_name_the_question_ids():
    with pytest.raises(ValueError, match=r"no prediction for 1 question\(s\): 3"):
        evaluate({1: "yes", 2: "2"}, GT)
    with pytest.raises(ValueError, match=r"no ground truth: 4, 5"):
        evaluate({**PRED, 4: "x", 5: "y"}, GT)
    many = {q: "x" for q in range(10, 20)}
    with pytest.raises(ValueError, match=r"10, 11, 12, 13, 14 \.\.\. \(10 in all\)"):
        evaluate({**PRED, **many}, GT)
    with pytest.raises(ValueError, match=r"no type for \[2\]"):
        evaluate(PRED, GT, {1: "a", 3: "b"})
    with pytest.raises(ValueError, match=r"no ground truth for \[9\]"):
        evaluate(PRED, GT, {1: "a", 2: "a", 3: "b", 9: "b"})
    with pytest.raises(ValueError, match="no questions"):
        evaluate({}, {})


# --- results file -------------------------------------------------------------------------------

def test_write_load_round_trip(tmp_path):
    path = str(tmp_path / "results.json")
    preds = {30: "two", 4: "yes", 1000: "café", 7: ""}
    write_results(path, preds)
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    assert rows == [{"question_id": 4, "answer": "yes"}, {"question_id": 7, "answer": ""},
                    {"question_id": 30, "answer": "two"}, {"question_id": 1000, "answer": "café"}]
    assert load_results(path) == preds


def test_write_rejects_non_int_ids(tmp_path):
    with pytest.raises(TypeError):
        write_results(str(tmp_path / "r.json"), {"1": "yes"})
    with pytest.raises(TypeError):
        write_results(str(tmp_path / "r.json"), {1: 2})


def test_load_errors(tmp_path):
    path = tmp_path / "r.json"
    rows = [{"question_id": q, "answer": "a"} for q in (3, 1, 3, 2, 1)]
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="duplicate question ids: 1, 3"):
        load_results(str(path))
    path.write_text(json.dumps({"1": "yes"}))
    with pytest.raises(ValueError, match="JSON list"):
        load_results(str(path))
    path.write_text(json.dumps([{"question_id": "1", "answer": "yes"}]))
    with pytest.raises(ValueError, match="malformed"):
        load_results(str(path))
    path.write_text(json.dumps([{"question_id": 1}]))
    with pytest.raises(ValueError, match="malformed"):
        load_results(str(path))


# --- optional cross-check against the official tool -------------------------------------------

def _load_reference(path):
    """The official tool's VQAEval class; its Python 2 print statements are turned into calls."""
    with open(path, encoding="utf-8") as f:
        source = re.sub(r"^(\s*)print (.+)$", r"\1print(\2)", f.read(), flags=re.M)
    namespace = {}
    exec(compile(source, path, "exec"), namespace)
    return namespace["VQAEval"]


class _FakeVQA:
    def __init__(self, qa):
        self.qa = qa

    def getQuesIds(self):  # noqa: N802 (the tool's API)
        return list(self.qa)


@pytest.mark.skipif(not os.environ.get("VQA_EVAL_REFERENCE"),
                    reason="set VQA_EVAL_REFERENCE to the official vqaEval.py to cross-check")
def test_matches_official_tool():
    vqa_eval_cls = _load_reference(os.environ["VQA_EVAL_REFERENCE"])
    rng = random.Random(0)
    pool = ["yes", "Yes", "yes.", " yes\t", "two", "2", "Two dogs", "2 dogs", "the dog", "a dog",
            "dont know", "don't know", "1,000", "1000", "t-shirt", "t shirt", "t - shirt", "3.5",
            "none", "0", "Im", "no one", "rock&roll", "yes, it is", "yes it is", "who's?"]
    gts, preds, types = {}, {}, {}
    for qid in range(400):
        choices = rng.sample(pool, rng.randint(1, 4))  # few distinct answers -> many matches
        gts[qid] = [rng.choice(choices) for _ in range(10)]
        preds[qid] = rng.choice(choices + [rng.choice(pool)])
        types[qid] = rng.choice(["yes/no", "number", "other"])
    qa = {q: {"answers": [{"answer": a, "answer_id": i + 1, "answer_confidence": "yes"}
                          for i, a in enumerate(gts[q])],
              "question_type": "what", "answer_type": types[q]} for q in gts}
    ref = vqa_eval_cls(_FakeVQA(qa), _FakeVQA({q: {"answer": p} for q, p in preds.items()}), n=2)
    ref.evaluate()
    for q in gts:
        assert ref.evalQA[q] == round(100 * question_accuracy(preds[q], gts[q]), 2), q
    ours = evaluate(preds, gts, types)
    assert ours["overall"] == ref.accuracy["overall"]
    assert ours["per_type"] == ref.accuracy["perAnswerType"]
    for text in pool + ["." * 40, "Mr. T", "1,b", "1,a", "a.b", "10:30"]:
        assert normalize_answer(text) == ref.processDigitArticle(
            ref.processPunctuation(text.replace("\n", " ").replace("\t", " ").strip())), text
