"""The VQA data layer: synthetic questions true of their scenes (and of the pixels), annotator
answers, the BLIP-JSON / official VQA v2 / synthetic builders with their skip reports, image id
separation and answer lists, the train loader (weights, padding, determinism, resume, flip) and
the evaluation batches."""

from __future__ import annotations

import collections
import io
import json
import logging

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from blip_jax.data import prepare, synthetic, synthetic_vqa as sv, vqa_builders
from blip_jax.data.report import DataError
from blip_jax.data.vqa_pipeline import answer_weights, make_vqa_train_loader, vqa_eval_batches
from blip_jax.image import MEAN, STD
from blip_jax.tokenizer import CLS_ID, SEP_ID, BlipTokenizer, pre_question
from test_data_synthetic import decode, measure  # the pixel measurements the caption tests use

TOK = BlipTokenizer()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return data_dir, prepare.ensure_synthetic_vqa(data_dir, num_images=24, eval_images=5, image_size=64, seed=0)


def _jpeg(color, size=(24, 20)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), color, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _write(path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


# ---- synthetic questions ----------------------------------------------------------------------

def test_synthetic_answers_are_true_deterministic_and_annotated_as_documented():
    cfg = sv.SyntheticVqaConfig(num_images=40, eval_images=200, image_size=64, seed=0)
    examples = {split: list(sv.generate(cfg, split)) for split in sv.SPLIT_CODES}
    questions = [q for split in examples for ex in examples[split] for q in ex.questions]
    vocabulary = set(sv.answer_list(cfg))
    for ex in (ex for split in examples.values() for ex in split):
        assert len(ex.questions) == cfg.questions_per_image and len({q.question for q in ex.questions}) == 3
        for q in ex.questions:
            assert sv.true_answer(ex.scene, q.question) == q.answer, (q, ex.scene)
            assert sv.true_answer(ex.scene, pre_question(q.question)) == q.answer  # what the model reads
            counts = collections.Counter(q.answers)
            assert len(q.answers) == 10 and set(q.answers) <= vocabulary
            assert counts[q.answer] > max(n for a, n in counts.items() if a != q.answer) if len(counts) > 1 else True
            assert q.answer_type == sv.answer_type(q.answer)
    assert len({q.question_id for q in questions}) == len(questions)
    assert sorted({ex.image_id for s in examples.values() for ex in s}) == list(range(440))
    # split seeds are disjoint; the same seed gives the same data, another seed other data
    assert examples["val"][0].scene != examples["test"][0].scene
    assert list(sv.generate(cfg, "train"))[:3] == examples["train"][:3]
    other = list(sv.generate(sv.SyntheticVqaConfig(num_images=40, image_size=64, seed=1), "train"))[:3]
    assert [e.questions for e in other] != [e.questions for e in examples["train"][:3]]
    # documented proportions: types about 1/6 each, presence yes/no balanced, annotator noise rates
    val = [q for ex in examples["val"] for q in ex.questions]
    shares = {t: n / len(val) for t, n in collections.Counter(q.question_type for q in val).items()}
    assert set(shares) == set(sv.QUESTION_TYPES) and all(0.12 < s < 0.22 for s in shares.values()), shares
    presence = [q.answer for q in val if q.question_type == "presence"]
    assert 0.35 < presence.count("yes") / len(presence) < 0.65
    some_wrong = np.mean([any(a != q.answer and a not in sv.SYNONYMS.get(q.answer, ()) for a in q.answers)
                          for q in val])
    assert abs(some_wrong - (1 - sv.WRONG_ANNOTATORS[0])) < 0.07, some_wrong
    assert any(set(q.answers) & set(sv.SYNONYMS.get(q.answer, ())) for q in val)
    assert sv.answer_list() == sorted(set(sv.answer_list())) and {"2", "two", "gray", "grey", "yeah"} <= vocabulary
    # the language prior is far from solving the task
    train = [q for ex in examples["train"] for q in ex.questions]
    assert sv.majority_baseline(val, train) < 0.25 and sv.majority_baseline(val, train, by="question_type") < 0.5


def test_synthetic_answers_match_the_pixels():
    """Answers recomputed from what the decoded JPEG shows (colour masks: kind, size, centroid;
    the background), not from the generator's scene."""
    cfg = sv.SyntheticVqaConfig(num_images=1, eval_images=30, seed=3)  # 96 px: the measurement's scale
    checked = collections.Counter()
    for ex in sv.generate(cfg, "val"):
        seen = measure(decode(ex.image_bytes()))
        scene = synthetic.Scene(cfg.image_size, seen["background"], (0.0, 0.0, 0.0), 0, tuple(
            synthetic.Shape(o["kind"], color, o["size"], o["x"], o["y"], 0.0) for color, o in seen["objects"].items()))
        for q in ex.questions:
            assert sv.true_answer(scene, q.question) == q.answer, (q, seen)
            checked[q.question_type] += 1
    assert min(checked.values()) >= 8, checked


def test_pre_question_and_answer_weights_follow_the_original():
    assert pre_question("What's the (RED) thing?!  ") == "what's the red thing?"
    assert pre_question("a.b: c, d ~e") == "ab c, d e"  # removed, not replaced by a space; ',' stays
    assert pre_question(" ".join(["w"] * 60)) == " ".join(["w"] * 50)
    assert answer_weights(["2"] * 6 + ["two"] * 3 + ["3"], "vqa") == [("2", 0.6), ("two", 0.3), ("3", 0.1)]
    assert answer_weights(["two"], "vg") == [("two", 0.2)] and answer_weights(["a"], "vg", 1.0) == [("a", 1.0)]


# ---- builders ---------------------------------------------------------------------------------

def _coco(root, subtype, image_id, color=(200, 30, 30)) -> None:
    (root / subtype).mkdir(parents=True, exist_ok=True)
    (root / subtype / f"COCO_{subtype}_{image_id:012d}.jpg").write_bytes(_jpeg(color))


def test_official_vqa_v2_builder(tmp_path):
    coco = tmp_path / "coco"
    _coco(coco, "train2014", 1)
    _coco(coco, "train2014", 2, (30, 30, 200))
    (coco / "train2014" / "COCO_train2014_000000000003.jpg").write_bytes(_jpeg((9, 9, 9))[:120])  # truncated
    _coco(coco, "val2014", 7)
    _coco(coco, "test2015", 9)

    def qa(qid, image_id, question, answers, mc):
        return ({"image_id": image_id, "question": question, "question_id": qid},
                {"question_id": qid, "image_id": image_id, "answers": [{"answer": a, "answer_confidence": "yes",
                 "answer_id": i + 1} for i, a in enumerate(answers)], "multiple_choice_answer": mc,
                 "question_type": question.split()[0], "answer_type": "other"})
    train = [qa(10, 1, "What color?", ["red"] * 9 + ["pink"], "red"), qa(11, 1, "Is it red?", ["yes"] * 10, "yes"),
             qa(20, 2, "What color is it?", ["blue"] * 10, "blue"), qa(30, 3, "Cut?", ["no"] * 10, "no"),
             qa(40, 4, "Missing?", ["no"] * 10, "no"), qa(41, 4, "Still missing?", ["no"] * 10, "no")]
    val = [qa(70, 7, "What?", ["red"] * 10, "red")]
    files = []
    for split, items in (("train", train), ("val", val)):
        files.append(("questions", f"{split}=" + _write(tmp_path / f"{split}_q.json", {
            "data_subtype": f"{split}2014", "questions": [q for q, _ in items]})))
        files.append(("annotations", f"{split}=" + _write(tmp_path / f"{split}_a.json", {
            "annotations": [a for _, a in items]})))
    files.append(("questions", "test=" + _write(tmp_path / "test_q.json", {
        "data_subtype": "test-dev2015", "questions": [{"image_id": 9, "question": "Why?", "question_id": 90}]})))
    data_dir = str(tmp_path / "tfds")
    builder = prepare.make_builder("vqa_v2", data_dir, image_root=str(coco), answer_list_size=2,
                                   questions=[f for kind, f in files if kind == "questions"],
                                   annotations=[f for kind, f in files if kind == "annotations"])
    report = prepare.build(builder)
    skipped = {s["file"].rsplit("/", 1)[1]: s["reason"] for s in report["skipped"]}
    assert skipped.keys() == {"COCO_train2014_000000000003.jpg", "COCO_train2014_000000000004.jpg"}
    assert "not a readable image" in skipped["COCO_train2014_000000000003.jpg"]
    assert skipped["COCO_train2014_000000000004.jpg"].startswith("missing image file (2 questions, first: ")
    assert {s: v["records"] for s, v in report["splits"].items()} == {"train": 3, "val": 1, "test": 1}
    ds = tfds.data_source("blip_vqa_v2", data_dir=data_dir)
    rec = ds["train"][0]
    assert (int(rec["image_id"]), rec["image_path"].decode(), int(rec["question_id"])) == (
        1, "train2014/COCO_train2014_000000000001.jpg", 10)
    assert [a.decode() for a in rec["answers"]] == ["red"] * 9 + ["pink"] and rec["question_type"] == b"What"
    test = ds["test"][0]
    assert test["image_path"] == b"test2015/COCO_test2015_000000000009.jpg" and len(test["answers"]) == 0
    # top multiple_choice_answers of train: "no" x3, then red / yes / blue x1 each: ties alphabetical
    assert vqa_builders.load_answer_list(data_dir, "blip_vqa_v2") == ["no", "blue"]
    assert report["answer_list"]["answers"] == 2 and "2 answers" in prepare.summary(report)


def _blip_vqa_files(tmp_path):
    coco, vg = tmp_path / "coco", tmp_path / "vg"
    _coco(coco, "train2014", 1)
    _coco(coco, "val2014", 5)
    (vg / "VG_100K").mkdir(parents=True)
    (vg / "VG_100K" / "1.jpg").write_bytes(_jpeg((30, 200, 30)))      # the same number as COCO image 1
    (vg / "VG_100K" / "view.jpg").write_bytes(_jpeg((90, 90, 200)))   # no number in the name
    (vg / "VG_100K" / "2.jpg").write_bytes(b"<html>not an image</html>")
    train = _write(tmp_path / "ann" / "vqa_train.json", [
        {"image": "train2014/COCO_train2014_000000000001.jpg", "question": "What color is it?", "question_id": 1,
         "answer": ["red"] * 7 + ["dark red"] * 3, "dataset": "vqa"},
        {"image": "train2014/COCO_train2014_000000000001.jpg", "question": "Why?", "question_id": 2, "answer": [],
         "dataset": "vqa"}])
    vg_qa = _write(tmp_path / "ann" / "vg_qa.json", [
        {"image": "VG_100K/1.jpg", "question": "How many?", "question_id": 3, "answer": "two", "dataset": "vg"},
        {"image": "VG_100K/view.jpg", "question": "Where?", "question_id": 4, "answer": "left", "dataset": "vg"},
        {"image": "VG_100K/2.jpg", "question": "Which?", "question_id": 5, "answer": "x", "dataset": "vg"}])
    test = _write(tmp_path / "ann" / "vqa_test.json", [
        {"image": "val2014/COCO_val2014_000000000005.jpg", "question": "What is it?", "question_id": 50,
         "dataset": "vqa"}])
    answers = _write(tmp_path / "ann" / "answer_list.json", ["red", "two", "left", "yes"])
    return coco, vg, [f"train={train},{vg_qa}", f"test={test}"], answers


def test_blip_json_builder_ids_skips_and_answer_list(tmp_path, capsys):
    coco, vg, specs, answers = _blip_vqa_files(tmp_path)
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(DataError, match=r"vg_qa.json: entry 0 is a 'vg' question: give .* --vg_image_root"):
        prepare.make_builder("blip_vqa", data_dir, annotations=specs, image_root=str(coco))
    assert prepare.main(["--source", "blip_vqa", "--data_dir", data_dir, "--annotations", *specs, "--image_root",
                         str(coco), "--vg_image_root", str(vg), "--answer_list", answers, "--name", "mine"]) == 0
    out = capsys.readouterr().out
    assert "train: 3 questions, 3 images, 1 vqa, 2 vg" in out and "4 answers" in out
    assert "VG_100K/2.jpg: not a readable image" in out and "training question without answers" in out
    ds = tfds.data_source("blip_vqa/mine", data_dir=data_dir)
    recs = [ds["train"][i] for i in range(3)]
    assert [(r["dataset"].decode(), int(r["image_id"])) for r in recs] == [
        ("vqa", 1), ("vg", vqa_builders.VG_IMAGE_ID_OFFSET + 1), ("vg", vqa_builders.OTHER_IMAGE_ID_OFFSET)]
    assert [a.decode() for a in recs[1]["answers"]] == ["two"]
    assert int(ds["test"][0]["image_id"]) == 5 and len(ds["test"][0]["answers"]) == 0
    assert vqa_builders.load_answer_list(data_dir, "blip_vqa/mine") == ["red", "two", "left", "yes"]
    # without --answer_list: the training questions' most common answers
    builder = prepare.make_builder("blip_vqa", str(tmp_path / "t2"), annotations=specs, image_root=str(coco),
                                   vg_image_root=str(vg))
    assert builder.answers == ["left", "red", "two", "x"]
    report = prepare.build(builder)
    with pytest.raises(DataError, match=r"answer_list.json missing: 'blip_pairs/c' is not a VQA dataset"):
        vqa_builders.load_answer_list(str(tmp_path / "t3"), _json_pairs(tmp_path / "t3"))
    assert report["splits"]["train"]["questions"] == {"vqa": 1, "vg": 2}


def _json_pairs(data_dir) -> str:
    img = data_dir / "img"
    img.mkdir(parents=True)
    (img / "a.jpg").write_bytes(_jpeg((1, 2, 3)))
    ann = _write(data_dir / "c.json", [{"image": "a.jpg", "caption": "a caption"}])
    return prepare.build(prepare.make_builder("json", str(data_dir), annotations=[ann], image_root=str(img)))["dataset"]


def test_builder_errors_name_the_problem(tmp_path):
    coco, vg, specs, _ = _blip_vqa_files(tmp_path)
    dup = _write(tmp_path / "dup.json", [{"image": "val2014/COCO_val2014_000000000005.jpg", "question": "q?",
                                          "question_id": 8, "answer": ["a"]}] * 2)
    with pytest.raises(DataError, match="question_id 8 appears twice in split 'val'"):
        prepare.build(prepare.make_builder("blip_vqa", str(tmp_path / "d"), annotations=[specs[0], f"val={dup}"],
                                           image_root=str(coco), vg_image_root=str(vg)))
    bad = _write(tmp_path / "bad.json", [{"image": "x.jpg", "question": "q", "answer": 3}])
    with pytest.raises(DataError, match=r"bad.json: entry 0: 'answer' must be a string or a list of strings"):
        prepare.make_builder("blip_vqa", str(tmp_path / "d"), annotations=[bad], image_root=str(coco))
    with pytest.raises(DataError, match="no training split with answers .* --answer_list"):
        prepare.make_builder("blip_vqa", str(tmp_path / "d"), annotations=[specs[1]], image_root=str(coco))
    q = _write(tmp_path / "q.json", {"questions": [{"image_id": 1, "question": "q", "question_id": 1}]})
    a = _write(tmp_path / "a.json", {"annotations": [{"question_id": 2, "answers": []}]})
    with pytest.raises(DataError, match=r"q.json: questions\[0\]: question_id 1 has no entry in .*a.json"):
        prepare.make_builder("vqa_v2", str(tmp_path / "d"), questions=[f"train={q}"], annotations=[f"train={a}"],
                             image_root=str(coco))


# ---- train loader -----------------------------------------------------------------------------

def _loader(synth, **kw):
    data_dir, name = synth
    args = dict(global_batch_size=8, image_size=32, seed=7, randaug=False)
    return make_vqa_train_loader(data_dir, [(name, "train")], **{**args, **kw})


def _same(a, b) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def test_train_batch_format_and_padding(synth):
    batch = next(iter(_loader(synth, max_answers=4, max_answer_tokens=6, randaug=True)))
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "image": ((8, 32, 32, 3), np.float32), "question_ids": ((8, 35), np.int32),
        "question_mask": ((8, 35), np.int32), "answer_ids": ((8, 4, 6), np.int32),
        "answer_mask": ((8, 4, 6), np.int32), "answer_weight": ((8, 4), np.float32)}
    assert (batch["question_ids"][:, 0] == CLS_ID).all()
    assert ((batch["question_ids"] == 0) == (batch["question_mask"] == 0)).all()
    used = batch["answer_weight"] > 0
    ids, mask = batch["answer_ids"], batch["answer_mask"]
    assert (ids[~used] == 0).all() and (mask[~used] == 0).all()  # padding slots all 0
    assert (ids[used][:, 0] == CLS_ID).all()
    assert (ids[used][np.arange(used.sum()), mask[used].sum(-1) - 1] == SEP_ID).all()
    np.testing.assert_allclose(batch["answer_weight"].sum(1), 1.0, atol=1e-6)  # VQA weights sum to 1
    assert (np.diff(batch["answer_weight"], axis=1) <= 0).all()  # heaviest first
    pixels = batch["image"] * STD + MEAN
    assert pixels.min() > -0.01 and pixels.max() < 1.01


def test_same_seed_same_batches_and_resume(synth):
    it = iter(_loader(synth))
    first = [next(it) for _ in range(2)]
    state = it.get_state()
    expected = [next(it) for _ in range(3)]  # 72 questions: 9 batches an epoch
    again = iter(_loader(synth))
    assert _same(first, [next(again) for _ in range(2)])
    resumed = iter(_loader(synth))
    resumed.set_state(state)
    assert _same(expected, [next(resumed) for _ in range(3)])
    other = next(iter(_loader(synth, seed=8)))
    assert not np.array_equal(other["question_ids"], first[0]["question_ids"])


def _qa_dataset(tmp_path, entries, verify_images=True) -> tuple[str, str]:
    """BLIP-format VQA dataset 'blip_vqa/qa' over one image of a red square left of a blue circle."""
    scene = synthetic.Scene(96, "gray", (1.0, 0.0, 0.0), 0, (
        synthetic.Shape("square", "red", "large", 25.0, 48.0, 15.0),
        synthetic.Shape("circle", "blue", "large", 70.0, 48.0, 15.0)))
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.jpg").write_bytes(synthetic.encode_jpeg(synthetic.render(scene)))
    (tmp_path / "img" / "bad.jpg").write_bytes(b"truncated")
    ann = _write(tmp_path / "qa.json", entries)
    data_dir = str(tmp_path / "tfds")
    prepare.build(prepare.make_builder("blip_vqa", data_dir, annotations=[f"train={ann}", f"val={ann}"],
                                       image_root=str(tmp_path / "img"), vg_image_root=str(tmp_path / "img"),
                                       verify_images=verify_images))
    return data_dir, "blip_vqa/qa"


def test_weights_dropped_and_cut_answers_and_skips(tmp_path, caplog):
    data_dir, name = _qa_dataset(tmp_path, [
        {"image": "x.jpg", "question": "Is it red?", "question_id": 1,
         "answer": ["yes"] * 6 + ["Yes", "no", "no", "maybe"]},
        {"image": "x.jpg", "question": "What is left?", "question_id": 2, "answer": "a red square on a gray background",
         "dataset": "vg"},
        {"image": "x.jpg", "question": "Why?", "question_id": 3, "answer": []},
        {"image": "bad.jpg", "question": "Is it blue?", "question_id": 4, "answer": ["no"]}], verify_images=False)
    with caplog.at_level(logging.WARNING):  # the val split keeps question 3: the loader must skip it
        it = iter(make_vqa_train_loader(data_dir, [(name, "val")], global_batch_size=2, image_size=16,
                                        max_answers=2, max_answer_tokens=5, num_epochs=1, randaug=False))
        (batch,) = list(it)
    assert "question 3): training question without answers" in caplog.text
    assert "(bad.jpg, question 4): not a readable image" in caplog.text
    rows = {TOK.decode(q): i for i, q in enumerate(batch["question_ids"])}
    vqa, vg = rows["is it red?"], rows["what is left?"]
    # "yes" 6/10 + "Yes" 1/10 merged (same tokens), "no" 2/10, "maybe" 1/10 dropped (3 answers > 2)
    np.testing.assert_allclose(batch["answer_weight"][vqa], [0.7, 0.2], atol=1e-6)
    assert [TOK.decode(a) for a in batch["answer_ids"][vqa]] == ["yes", "no"]
    np.testing.assert_allclose(batch["answer_weight"][vg], [0.2, 0.0])
    assert batch["answer_ids"][vg, 0].tolist() == TOK.encode(["a red square"], 5)[0][0].tolist()  # cut, [SEP] kept
    assert (it.answers_dropped, it.answers_truncated) == (1, 1)
    assert "qa:val[0] (x.jpg, question 1): 3 unique answers, keeping the 2 heaviest" in caplog.text
    assert "'a red square on a gray background' is longer than 5 tokens" in caplog.text


def test_swap_flip_swaps_left_and_right_in_question_and_answers(tmp_path):
    data_dir, name = _qa_dataset(tmp_path, [
        {"image": "x.jpg", "question": "Is the red square to the left or to the right of the blue circle?",
         "question_id": i, "answer": ["left"] * 10} for i in range(8)])
    outcomes = set()
    for flip in ("swap", "plain"):
        batch = next(iter(make_vqa_train_loader(data_dir, [(name, "train")], global_batch_size=8, image_size=48,
                                                scale=(1.0, 1.0), randaug=False, flip=flip, seed=1)))
        for image, q, a in zip(batch["image"], batch["question_ids"], batch["answer_ids"][:, 0]):
            pixels = image * STD + MEAN
            red_x = np.nonzero((pixels[..., 0] > 0.7) & (pixels[..., 2] < 0.3))[1].mean()
            blue_x = np.nonzero((pixels[..., 2] > 0.7) & (pixels[..., 0] < 0.3))[1].mean()
            question, answer = TOK.decode(q), TOK.decode(a)
            if flip == "swap":  # the answer stays true of the picture
                assert sv.true_answer(synthetic.Scene(48, "gray", (0, 0, 0), 0, (
                    synthetic.Shape("square", "red", "large", red_x, 24.0, 7.0),
                    synthetic.Shape("circle", "blue", "large", blue_x, 24.0, 7.0))), question) == answer
            assert ("to the left or to the right" in question) != (flip == "swap" and red_x > blue_x)
            outcomes.add((flip, red_x < blue_x, answer))
    assert {o for o in outcomes if o[0] == "swap"} == {("swap", True, "left"), ("swap", False, "right")}
    assert ("plain", False, "left") in outcomes  # the original mirrors the image only


# ---- evaluation batches -----------------------------------------------------------------------

def test_eval_batches_cover_every_question_once(synth):
    data_dir, name = synth
    records = tfds.data_source(name, split="val", data_dir=data_dir)
    expected = [int(records[i]["question_id"]) for i in range(len(records))]
    batches = list(vqa_eval_batches(data_dir, name, "val", batch_size=4, image_size=32))
    assert len(expected) == 15 and len(batches) == 4
    ids = np.concatenate([b["question_id"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    assert ids[valid].tolist() == expected and ids[~valid].tolist() == [-1] and not valid[-1]
    b = batches[0]
    assert b["image"].shape == (4, 32, 32, 3) and b["question_ids"].dtype == np.int32
    assert b["question_id"].dtype == np.int64
    assert b["question"][0] == pre_question(records[0]["question"].decode()) and len(b["answers"][0]) == 10
    assert set(b["question_type"]) <= set(sv.QUESTION_TYPES)
    shards = [list(vqa_eval_batches(data_dir, name, "val", batch_size=3, image_size=32, shard_index=k,
                                    shard_count=2)) for k in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3
    got = [i for s in shards for b in s for i, v in zip(b["question_id"], b["valid"]) if v]
    assert sorted(got) == sorted(expected)


def test_eval_batches_report_unreadable_images(tmp_path, caplog):
    data_dir, name = _qa_dataset(tmp_path, [
        {"image": "x.jpg", "question": "Is it red?", "question_id": 1, "answer": ["yes"]},
        {"image": "bad.jpg", "question": "Is it blue?", "question_id": 2, "answer": ["no"]},
        {"image": "x.jpg", "question": "Is it green?", "question_id": 3, "answer": ["no"]}], verify_images=False)
    with caplog.at_level(logging.WARNING, logger="blip_jax.data.vqa_pipeline"):
        batches = vqa_eval_batches(data_dir, name, "val", batch_size=4, image_size=16)
        (batch,) = list(batches)
    assert batch["question_id"].tolist() == [1, 2, 3, -1] and batch["valid"].tolist() == [True, False, True, False]
    assert [qid for qid, _ in batches.skipped] == [2] and "bad.jpg" in batches.skipped[0][1]
    assert "cannot answer question 2" in caplog.text
