"""The NLVR2 data layer: synthetic statements about image pairs whose labels hold for the scenes
(and the pixels), balanced and not given away by their words; the BLIP-JSON / official NLVR2 /
synthetic builders with their skip reports; the train loader (batch contract, the pair swap,
determinism, resume, skips), the evaluation batches, and the trainer's dispatch."""

from __future__ import annotations

import collections
import io
import json
import logging
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from blip_jax.data import nlvr_builders, prepare, synthetic, synthetic_nlvr as sn
from blip_jax.data.nlvr_pipeline import (NlvrTrainLoader, make_nlvr_train_loader, nlvr_eval_batches,
                                         swap_left_right_words)
from blip_jax.data.report import DataError
from blip_jax.image import MEAN, STD
from blip_jax.tokenizer import CLS_ID, SEP_ID, BlipTokenizer, pre_caption
from test_data_synthetic import decode, measure  # the pixel measurements the caption tests use

TOK = BlipTokenizer()
RED, BLUE = (215, 35, 35), (35, 75, 215)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return data_dir, prepare.ensure_synthetic_nlvr(data_dir, num_images=24, eval_images=5, image_size=64, seed=0)


def _image(color, fmt="JPEG", size=(24, 20)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), color, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _write(path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def _scene(*shapes) -> synthetic.Scene:
    return synthetic.Scene(96, "gray", (0.0, 0.0, 0.0), 0, tuple(
        synthetic.Shape(kind, color, size, 20.0 + 30 * i, 48.0, 10.0) for i, (size, color, kind) in enumerate(shapes)))


# ---- synthetic statements ---------------------------------------------------------------------

def test_synthetic_labels_hold_are_balanced_and_deterministic():
    cfg = sn.SyntheticNlvrConfig(num_images=60, eval_images=150, image_size=64, seed=0)
    examples = {split: list(sn.generate(cfg, split)) for split in sn.SPLIT_CODES}
    for split, exs in examples.items():
        statements = [s for ex in exs for s in ex.statements]
        assert sum(s.label for s in statements) * 2 == len(statements) == 2 * len(exs)  # exactly 50/50
        for ex in exs:
            scene0, scene1 = ex.scenes
            assert len(ex.statements) == 2 and len({s.template for s in ex.statements}) == 2
            for s in ex.statements:
                assert sn.true_label(scene0, scene1, s.sentence) == s.label, (s, ex.scenes)
                cleaned = pre_caption(s.sentence, 40)  # what the model reads
                assert sn.true_label(scene0, scene1, cleaned) == s.label
                # the pair swap keeps every label; no statement places shapes within an image
                assert sn.true_label(scene1, scene0, swap_left_right_words(cleaned)) == s.label
                assert not re.search(r"\b(left|right|above|below|top|bottom)\b",
                                     re.sub(r"\b(left|right) image\b", "", s.sentence)), s
    statements = [s for ex in examples["val"] for s in ex.statements]
    counts = collections.Counter(s.template for s in statements)
    assert set(counts) == set(sn.TEMPLATES) and min(counts.values()) >= 25, counts  # 300 statements
    for template in sn.TEMPLATES:  # both labels for every template
        share = np.mean([s.label for s in statements if s.template == template])
        assert 0.3 < share < 0.7, (template, share)
    # the words alone do not give the label away
    train = [s for ex in examples["train"] for s in ex.statements]
    assert sn.majority_baseline(statements, train, by="template") < 0.62
    assert sn.majority_baseline(statements, train, by="sentence") < 0.62
    assert 0.3 < np.mean([s.template in sn.SIDED for s in statements]) < 0.55
    ids = [(ex.pair_id, s.identifier) for exs in examples.values() for ex in exs for s in ex.statements]
    assert len({i for _, i in ids}) == len(ids) and sorted({p for p, _ in ids}) == list(range(360))
    # a pure function of (seed, split, index); split seeds disjoint; another seed other data
    assert list(sn.generate(cfg, "val"))[:3] == examples["val"][:3]
    assert sn.example_at(cfg, "val", 7) == examples["val"][7]
    assert examples["val"][0].scenes != examples["test"][0].scenes
    other = list(sn.generate(sn.SyntheticNlvrConfig(num_images=60, image_size=64, seed=1), "train"))[:3]
    assert [e.statements for e in other] != [e.statements for e in examples["train"][:3]]
    # an odd number of statements per pair: balanced within one per split
    odd = sn.SyntheticNlvrConfig(num_images=9, eval_images=5, statements_per_pair=3, image_size=64)
    for split in sn.SPLIT_CODES:
        labels = [s.label for ex in sn.generate(odd, split) for s in ex.statements]
        assert abs(2 * sum(labels) - len(labels)) <= 1, labels


def test_synthetic_template_and_description_subsets():
    """The task can be narrowed to some templates and ways of naming a shape (the tiny recipe
    names shapes by colour): only those are drawn, labels still hold and balance, the dataset
    gets its own name, and a name outside the lists is refused."""
    cfg = sn.SyntheticNlvrConfig(num_images=40, eval_images=40, image_size=64,
                                 templates=("side_has", "both", "same_count"), descriptions=["color"])
    assert cfg.descriptions == ("color",)
    assert cfg.name == "n40_e40_s2_seed0_px64_tside_has-both-same_count_dcolor"
    assert sn.SyntheticNlvrConfig(num_images=40, eval_images=40, image_size=64).name == "n40_e40_s2_seed0_px64"
    statements = [(ex, s) for ex in sn.generate(cfg, "val") for s in ex.statements]
    assert {s.template for _, s in statements} == set(cfg.templates)
    assert sum(s.label for _, s in statements) * 2 == len(statements) == 80
    for ex, s in statements:
        assert sn.true_label(*ex.scenes, s.sentence) == s.label
        claim = sn.parse_statement(s.sentence)
        if claim.desc is not None:  # "a red shape": the colour and nothing else
            assert claim.desc.color and claim.desc.kind is None and claim.desc.size is None, s
    for bad in (dict(descriptions=("colour",)), dict(templates=()), dict(templates=("both", "both")),
                dict(templates=("both",), statements_per_pair=2)):
        with pytest.raises(ValueError, match="templates|descriptions|statements_per_pair"):
            sn.SyntheticNlvrConfig(num_images=4, **bad)


def test_synthetic_labels_match_the_pixels():
    """Labels recomputed from what the decoded JPEGs show (colour masks: kind, size), not from
    the generator's scenes."""
    cfg = sn.SyntheticNlvrConfig(num_images=1, eval_images=14, seed=3)  # 96 px: the measurement's scale
    checked = collections.Counter()
    for ex in sn.generate(cfg, "val"):
        scenes = []
        for data in ex.image_bytes():
            seen = measure(decode(data))
            scenes.append(synthetic.Scene(cfg.image_size, seen["background"], (0.0, 0.0, 0.0), 0, tuple(
                synthetic.Shape(o["kind"], color, o["size"], o["x"], o["y"], 0.0)
                for color, o in seen["objects"].items())))
        for s in ex.statements:
            assert sn.true_label(scenes[0], scenes[1], s.sentence) == s.label, (s, scenes)
            checked[s.label] += 1
    assert checked[True] == checked[False] == 14


def test_true_label_reads_the_words():
    left = _scene(("large", "red", "circle"), ("small", "blue", "star"))
    right = _scene(("small", "red", "square"))
    expected = {
        "the left image has more shapes than the right image": True,
        "there are fewer shapes in the left image than in the right image": False,
        "the right image has fewer shapes than the left image": True,
        "the two images have the same number of shapes": False,
        "both images contain a red shape": True,
        "both images have a circle": False,
        "there is a star in exactly one image": True,
        "exactly one image contains a red shape": False,
        "only one of the images has a red square": True,
        "the right image contains a big circle": False,
        "the left image contains a big circle": True,
        "the left image has a little circle": False,
        "there is a small star in the left image": True,
        "the right image has an orange shape": False,
        "neither image has a green shape": True,
        "there is no red square in either image": False,
        "neither image contains a large square": True,
        "the left image has exactly two shapes": True,
        "there is exactly one shape in the right image": True,
        "the right image contains exactly two shapes": False,
        "The left image contains a blue star.": True,  # case and the full stop do not matter
    }
    for statement, label in expected.items():
        assert sn.true_label(left, right, statement) is label, statement
        # swapping the images and the words left/right keeps the label
        swapped = swap_left_right_words(pre_caption(statement))
        assert sn.true_label(right, left, swapped) is label, swapped
    same = _scene(("small", "green", "cross"), ("large", "white", "star"))
    assert sn.true_label(left, same, "the two images have the same number of shapes") is True
    assert sn.true_label(left, same, "the left image has more shapes than the right image") is False
    for outside in ("the left image has more shapes than the left image", "is there a star",
                    "the red circle is left of the blue star", "both images contain a unicorn"):
        assert sn.true_label(left, right, outside) is None, outside
    claim = sn.parse_statement("there is no big red star in either image")
    assert claim.desc == sn.Desc("large", "red", "star", "big")
    assert claim.text == "there is no big red star in either image"
    assert swap_left_right_words("left, right left") == "left, left right"  # whole words only, as the original


# ---- builders ---------------------------------------------------------------------------------

def test_blip_json_builder_skips_and_names_bad_images(tmp_path, capsys):
    img = tmp_path / "img"
    img.mkdir()
    (img / "a.jpg").write_bytes(_image(RED))
    (img / "b.jpg").write_bytes(_image(BLUE))
    (img / "c.png").write_bytes(_image((30, 160, 50), "PNG"))
    (img / "bad.jpg").write_bytes(b"<html>not an image</html>")
    train = _write(tmp_path / "ann" / "nlvr_train.json", [
        {"images": ["a.jpg", "b.jpg"], "sentence": "The left image is red.", "label": "True"},
        {"images": ["a.jpg", "b.jpg"], "sentence": "The right image is red.", "label": "False"},
        {"images": ["bad.jpg", "b.jpg"], "sentence": "One is red.", "label": "True"},
        {"images": ["bad.jpg", "a.jpg"], "sentence": "One is blue.", "label": "True"},
        {"images": ["a.jpg", "missing.jpg"], "sentence": "The left image is red.", "label": "True"},
        {"images": ["c.png", "a.jpg"], "sentence": "...", "label": "True"},
        {"images": ["c.png", "a.jpg"], "sentence": "Both images are green.", "label": "False"}])
    dev = _write(tmp_path / "ann" / "nlvr_dev.json", [
        {"images": ["a.jpg", "c.png"], "sentence": "The right image is green.", "label": "True"}])
    data_dir = str(tmp_path / "tfds")
    assert prepare.main(["--source", "blip_nlvr", "--data_dir", data_dir, "--annotations", f"train={train}",
                         f"val={dev}", "--image_root", str(img)]) == 0
    out = capsys.readouterr().out
    assert "train: 3 sentences, 3 images" in out and "val: 1 sentences" in out
    assert "train labels: 1 true, 2 false" in out
    report = prepare.load_report(data_dir, "blip_nlvr/nlvr_train")
    skipped = {s["file"].rsplit("/", 1)[1]: s["reason"] for s in report["skipped"]}
    assert skipped.keys() == {"bad.jpg", "missing.jpg", "c.png"}, skipped
    assert skipped["bad.jpg"].startswith("not a readable image") and "(2 sentences, first: " in skipped["bad.jpg"]
    assert skipped["missing.jpg"].startswith("missing image file (1 sentence, first: ")
    assert skipped["c.png"].startswith("empty sentence") and "entry 5" in skipped["c.png"]
    ds = tfds.data_source("blip_nlvr/nlvr_train", data_dir=data_dir)
    recs = [ds["train"][i] for i in range(3)]
    assert [(r["identifier"].decode(), int(r["label"]), int(r["pair_id"])) for r in recs] == [
        ("train-0", 1, 0), ("train-1", 0, 0), ("train-6", 0, 4)]
    assert recs[2]["image0_path"] == b"c.png" and recs[2]["image1_path"] == b"a.jpg"
    assert recs[0]["image0"] == (img / "a.jpg").read_bytes() and recs[0]["sentence"] == b"The left image is red."
    val = ds["val"][0]
    assert (val["identifier"], int(val["pair_id"])) == (b"val-0", 5)
    bad = _write(tmp_path / "bad_label.json", [{"images": ["a.jpg", "b.jpg"], "sentence": "s", "label": "yes"}])
    with pytest.raises(DataError, match=r"bad_label.json: entry 0: 'label' must be \"True\" or \"False\""):
        prepare.make_builder("blip_nlvr", data_dir, annotations=[bad], image_root=str(img))
    dup = _write(tmp_path / "dup.json", [{"images": ["a.jpg", "b.jpg"], "sentence": "s", "label": "True",
                                          "identifier": "x"}] * 2)
    with pytest.raises(DataError, match="identifier 'x' appears twice in split 'train'"):
        prepare.build(prepare.make_builder("blip_nlvr", str(tmp_path / "d"), annotations=[dup], image_root=str(img)))


def test_official_nlvr2_builder(tmp_path):
    root = tmp_path / "nlvr2"
    for rel, color in (("train/7/train-10-0-img0.png", RED), ("train/7/train-10-0-img1.png", BLUE),
                       ("train/7/train-10-1-img0.png", RED),  # its img1 is missing
                       ("dev/dev-3-0-img0.png", RED), ("dev/dev-3-1-img0.png", BLUE), ("dev/dev-3-1-img1.png", RED),
                       ("images/test1/test1-5-2-img0.png", RED), ("images/test1/test1-5-2-img1.png", BLUE)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_image(color, "PNG"))
    (root / "dev/dev-3-0-img1.png").write_bytes(_image(BLUE)[:100])  # truncated (a JPEG named .png)

    def lines(path, items):
        path.write_text("\n".join(json.dumps(i) for i in items) + "\n")
        return str(path)
    train = lines(tmp_path / "train.json", [
        {"identifier": "train-10-0-0", "sentence": "The left image is red.", "label": "True", "directory": 7},
        {"identifier": "train-10-0-1", "sentence": "The right image is red.", "label": "False", "directory": 7},
        {"identifier": "train-10-1-0", "sentence": "Only one image.", "label": "True", "directory": 7}])
    dev = lines(tmp_path / "dev.json", [
        {"identifier": "dev-3-0-0", "sentence": "Both are blue.", "label": "False"},
        {"identifier": "dev-3-1-0", "sentence": "The left one is blue.", "label": "True"}])
    test = lines(tmp_path / "test1.json", [{"identifier": "test1-5-2-1", "sentence": "Red, blue.", "label": "True"}])
    data_dir = str(tmp_path / "tfds")
    report = prepare.build(prepare.make_builder("nlvr2", data_dir, annotations=[f"train={train}", f"val={dev}",
                                                                               f"test={test}"],
                                                image_root=str(root)))
    skipped = {s["file"].rsplit("/", 1)[1]: s["reason"] for s in report["skipped"]}
    assert skipped.keys() == {"train-10-1-img1.png", "dev-3-0-img1.png"}
    assert skipped["train-10-1-img1.png"].startswith("missing image file (1 sentence, first: ")
    assert "train.json: line 3" in skipped["train-10-1-img1.png"]
    assert skipped["dev-3-0-img1.png"].startswith("not a readable image")
    assert {s: v["records"] for s, v in report["splits"].items()} == {"train": 2, "val": 1, "test": 1}
    assert report["labels"]["train"] == {"true": 1, "false": 1}
    ds = tfds.data_source("blip_nlvr2", data_dir=data_dir)
    rec = ds["train"][0]
    assert (rec["identifier"], rec["image0_path"], rec["image1_path"]) == (
        b"train-10-0-0", b"train/7/train-10-0-img0.png", b"train/7/train-10-0-img1.png")
    assert int(ds["train"][1]["pair_id"]) == int(rec["pair_id"]) and int(rec["label"]) == 1
    assert ds["val"][0]["identifier"] == b"dev-3-1-0" and ds["test"][0]["identifier"] == b"test1-5-2-1"
    assert nlvr_builders.nlvr2_image_paths("dev-850-0-1") == ("dev/dev-850-0-img0.png", "dev/dev-850-0-img1.png")
    blip = tmp_path / "blip.json"
    blip.write_text(json.dumps([{"images": ["a", "b"], "sentence": "s", "label": "True"}], indent=1))
    with pytest.raises(DataError, match=r"blip.json: line 1: invalid JSON .* --source blip_nlvr"):
        nlvr_builders.parse_nlvr2_jsonl(str(blip))


# ---- train loader -----------------------------------------------------------------------------

def _loader(synth, **kw):
    data_dir, name = synth
    args = dict(global_batch_size=8, image_size=32, seed=7, randaug=False)
    return make_nlvr_train_loader(data_dir, [(name, "train")], **{**args, **kw})


def _same(a, b) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def test_train_batch_contract_determinism_and_resume(synth):
    it = iter(_loader(synth, randaug=True, max_tokens=20))
    batch = next(it)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "images": ((8, 2, 32, 32, 3), np.float32), "ids": ((8, 20), np.int32), "mask": ((8, 20), np.int32),
        "label": ((8,), np.int32)}
    assert (batch["ids"][:, 0] == CLS_ID).all() and set(batch["label"].tolist()) <= {0, 1}
    assert (batch["ids"][np.arange(8), batch["mask"].sum(1) - 1] == SEP_ID).all()
    assert ((batch["ids"] == 0) == (batch["mask"] == 0)).all()
    pixels = batch["images"] * STD + MEAN
    assert pixels.min() > -0.01 and pixels.max() < 1.01
    first = [next(iter(_loader(synth)))]
    it = iter(_loader(synth))
    assert _same(first, [next(it)])
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    resumed = iter(_loader(synth))
    resumed.set_state(state)
    assert _same(expected, [next(resumed) for _ in range(2)])
    assert not np.array_equal(next(iter(_loader(synth, seed=8)))["ids"], first[0]["ids"])
    with pytest.raises(ValueError, match="flip='swap' would swap left/right .* use flip='plain'"):
        _loader(synth, flip="swap")


def _pair_dataset(tmp_path, entries, verify_images=True) -> tuple[str, str]:
    """BLIP-format NLVR dataset 'blip_nlvr/pairs' over a red and a blue image (and a bad file)."""
    img = tmp_path / "img"
    img.mkdir()
    (img / "red.jpg").write_bytes(_image(RED, size=(32, 32)))
    (img / "blue.jpg").write_bytes(_image(BLUE, size=(32, 32)))
    (img / "bad.jpg").write_bytes(b"truncated")
    ann = _write(tmp_path / "pairs.json", entries)
    data_dir = str(tmp_path / "tfds")
    prepare.build(prepare.make_builder("blip_nlvr", data_dir, annotations=[f"train={ann}", f"val={ann}"],
                                       image_root=str(img), verify_images=verify_images))
    return data_dir, "blip_nlvr/pairs"


def _red_first(images: np.ndarray) -> np.ndarray:
    """Per pair [B, 2, H, W, 3]: whether image 0 is the red one."""
    rgb = (images * STD + MEAN).mean(axis=(2, 3))
    return rgb[:, 0, 0] > rgb[:, 1, 0]


def test_pair_swap_swaps_the_images_and_the_words(tmp_path):
    sentence = "The left image is red and the right image is blue."
    data_dir, name = _pair_dataset(tmp_path, [{"images": ["red.jpg", "blue.jpg"], "sentence": sentence,
                                               "label": "True"}] * 16)
    (reference,) = list(nlvr_eval_batches(data_dir, name, "val", batch_size=16, image_size=32))
    assert _red_first(reference["images"]).all()  # evaluation never swaps
    assert set(reference["sentence"]) == {pre_caption(sentence, 40)} and reference["valid"].all()
    swapped_text = "the right image is red and the left image is blue"
    seen = collections.Counter()
    for swap in (True, False):
        batch = next(iter(make_nlvr_train_loader(data_dir, [(name, "train")], global_batch_size=16, image_size=32,
                                                 scale=(1.0, 1.0), randaug=False, flip="plain", swap=swap, seed=3)))
        red_first = _red_first(batch["images"])
        for i, text in enumerate(TOK.decode(row) for row in batch["ids"]):
            swapped = not red_first[i]
            assert text == (swapped_text if swapped else pre_caption(sentence, 40)), (text, swapped)
            # the images are the evaluation's, in one order or the other
            order = batch["images"][i, ::-1] if swapped else batch["images"][i]
            mirror = order[:, :, ::-1]
            assert min(np.abs(x - reference["images"][i]).max() for x in (order, mirror)) < 0.05
            seen[(swap, swapped)] += 1
        assert (batch["label"] == 1).all()
    assert seen[(True, True)] and seen[(True, False)] and not seen[(False, True)], seen


def test_unreadable_images_are_skipped_in_training_and_flagged_in_evaluation(tmp_path, caplog):
    data_dir, name = _pair_dataset(tmp_path, [
        {"images": ["red.jpg", "blue.jpg"], "sentence": "The left image is red.", "label": "True"},
        {"images": ["red.jpg", "bad.jpg"], "sentence": "The right image is bad.", "label": "False"},
        {"images": ["blue.jpg", "red.jpg"], "sentence": "The left image is red.", "label": "False"}],
        verify_images=False)
    with caplog.at_level(logging.WARNING):
        it = iter(make_nlvr_train_loader(data_dir, [(name, "train")], global_batch_size=2, image_size=16,
                                         randaug=False))
        batch, _ = next(it), next(it)  # two epochs' good examples: the bad one was passed at least once
    assert it.skipped >= 1 and "pairs:train[1] (train-1) image1 bad.jpg: not a readable image" in caplog.text
    assert sorted(batch["label"].tolist()) == [0, 1]
    with caplog.at_level(logging.WARNING, logger="blip_jax.data.nlvr_pipeline"):
        batches = nlvr_eval_batches(data_dir, name, "val", batch_size=4, image_size=16)
        (batch,) = list(batches)
    assert batch["identifier"].tolist() == ["val-0", "val-1", "val-2", ""]
    assert batch["valid"].tolist() == [True, False, True, False] and batch["label"].tolist() == [1, 0, 0, -1]
    assert [i for i, _ in batches.skipped] == ["val-1"] and "bad.jpg" in batches.skipped[0][1]
    assert "cannot classify val-1" in caplog.text and batches.num_examples == 3


def test_eval_batches_cover_every_example_once(synth):
    data_dir, name = synth
    records = tfds.data_source(name, split="val", data_dir=data_dir)
    expected = [records[i]["identifier"].decode() for i in range(len(records))]
    batches = list(nlvr_eval_batches(data_dir, name, "val", batch_size=4, image_size=32, max_tokens=24))
    assert len(expected) == 10 and len(batches) == 3
    ids = np.concatenate([b["identifier"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    assert ids[valid].tolist() == expected and not valid[-2:].any() and valid[:10].all()
    labels = np.concatenate([b["label"] for b in batches])
    assert labels[:10].tolist() == [int(records[i]["label"]) for i in range(10)] and labels[10:].tolist() == [-1, -1]
    b = batches[0]
    assert {k: (v.shape, v.dtype) for k, v in b.items() if k not in ("identifier", "sentence")} == {
        "images": ((4, 2, 32, 32, 3), np.float32), "ids": ((4, 24), np.int32), "mask": ((4, 24), np.int32),
        "label": ((4,), np.int32), "valid": ((4,), np.bool_)}
    assert b["sentence"][0] == pre_caption(records[0]["sentence"].decode(), 40)
    shards = [nlvr_eval_batches(data_dir, name, "val", batch_size=3, image_size=32, shard_index=k, shard_count=3)
              for k in range(3)]
    got = [[i for b in s for i, v in zip(b["identifier"], b["valid"]) if v] for s in shards]
    assert [len(g) for g in got] == [s.num_examples for s in shards] == [4, 3, 3]
    assert sorted(i for g in got for i in g) == sorted(expected)


# ---- the trainer's input ----------------------------------------------------------------------

def test_trainer_input_builds_the_nlvr_loader_from_the_synthetic_alias(tmp_path, monkeypatch):
    from blip_jax.data import nlvr_pipeline
    from blip_jax.train import input as train_input
    from blip_jax.train.defaults import base_config
    c = base_config("tiny")
    c.task = "nlvr"
    c.data.data_dir = str(tmp_path)
    c.data.train_sources = [("synthetic_nlvr", "train")]
    c.data.synthetic_num_images, c.data.synthetic_eval_images, c.data.workers = 8, 2, 0
    c.data.flip, c.data.randaugment, c.batch_size = "plain", False, 4
    data = train_input.TrainData(c)
    name = prepare.synthetic_nlvr_dataset_name(num_images=8, eval_images=2, statements_per_pair=2, seed=0)
    assert data.sources == [(name, "train")] and isinstance(data.loader, NlvrTrainLoader)
    assert data.num_examples == 16
    batch = next(data.iterator())
    assert batch["images"].shape == (4, 2, 64, 64, 3) and batch["ids"].shape == (4, c.data.max_tokens)
    seen = {}
    monkeypatch.setattr(nlvr_pipeline, "make_nlvr_train_loader", lambda *a, **kw: seen.update(kw))
    c.data.nlvr_swap, c.data.max_words = False, 40
    train_input.TrainData(c)
    assert (seen["swap"], seen["max_words"], seen["flip"], seen["global_batch_size"]) == (False, 40, "plain", 4)
    c.data.synthetic_nlvr_templates, c.data.synthetic_nlvr_descriptions = "side_has, both", "color"
    assert train_input.TrainData(c).sources == [(prepare.synthetic_nlvr_dataset_name(
        num_images=8, eval_images=2, statements_per_pair=2, seed=0, templates=("side_has", "both"),
        descriptions=("color",)), "train")]
