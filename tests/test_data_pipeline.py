"""The grain input pipeline: batch format, determinism, resumable state, sharding, flip with
left/right swap, augmentation ops, evaluation data, and bad images at pipeline time."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from blip_jax.data import prepare, synthetic, transforms
from blip_jax.data.export import export_images
from blip_jax.data.pipeline import make_eval_data, make_train_loader, scan_records
from blip_jax.data.report import DataError
from blip_jax.image import MEAN, STD, preprocess
from blip_jax.tokenizer import CLS_ID, SEP_ID, BlipTokenizer

N_WEB = 48  # train_web records; train_clean: 9 images x 5 captions; val/test: 4 images x 5


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return data_dir, prepare.ensure_synthetic(data_dir, num_images=N_WEB, seed=0)


def _loader(synth, **kw):
    data_dir, name = synth
    args = dict(global_batch_size=8, image_size=32, seed=7, worker_count=0)
    args.update(kw)
    return make_train_loader(data_dir, name, args.pop("split", "train_web"), **args)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def test_batch_format(synth):
    batch = next(iter(_loader(synth, global_batch_size=16, max_tokens=20)))
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "image": ((16, 32, 32, 3), np.float32), "text_ids": ((16, 20), np.int32),
        "text_mask": ((16, 20), np.int32), "image_id": ((16,), np.int32)}
    ids, mask = batch["text_ids"], batch["text_mask"]
    assert (ids[:, 0] == CLS_ID).all() and (ids[np.arange(16), mask.sum(1) - 1] == SEP_ID).all()
    assert ((ids == 0) == (mask == 0)).all()
    assert set(batch["image_id"].tolist()) <= set(range(N_WEB)) and len(set(batch["image_id"].tolist())) == 16
    pixels = batch["image"] * STD + MEAN  # back to [0, 1]: normalised with the CLIP statistics
    assert pixels.min() > -0.01 and pixels.max() < 1.01 and pixels.std() > 0.05


def test_same_seed_same_batches_other_seed_other_batches(synth):
    a = _take(iter(_loader(synth)), 3)
    assert _same(a, _take(iter(_loader(synth)), 3))
    b = _take(iter(_loader(synth, seed=8)), 3)
    assert not np.array_equal(a[0]["image_id"], b[0]["image_id"])


def test_restored_state_continues_identically_across_epochs(synth):
    loader = _loader(synth)  # 6 batches per epoch
    it = iter(loader)
    _take(it, 4)
    state = it.get_state()
    expected = _take(it, 5)  # runs into the second epoch
    fresh = iter(_loader(synth))
    fresh.set_state(state)
    assert _same(_take(fresh, 5), expected)
    epoch1 = np.concatenate([b["image_id"] for b in _take(iter(loader), 6)])
    assert sorted(epoch1.tolist()) == list(range(N_WEB))  # an epoch sees every record once


def test_restored_state_with_worker_processes(synth):
    loader = _loader(synth, worker_count=2, split="train_clean")
    it = iter(loader)
    first = _take(it, 3)
    state = it.get_state()
    expected = _take(it, 3)
    fresh = iter(_loader(synth, worker_count=2, split="train_clean"))
    fresh.set_state(state)
    assert _same(_take(fresh, 3), expected)
    assert not _same(first, expected)


def test_two_processes_get_disjoint_shards_covering_the_epoch(synth):
    seen = []
    for index in range(2):
        loader = _loader(synth, shard_index=index, shard_count=2, num_epochs=1)
        batches = list(iter(loader))
        assert len(batches) == loader.steps_per_epoch == N_WEB // 2 // 4
        assert all(b["image"].shape[0] == 4 for b in batches)  # per-host batch = global / shard_count
        seen.append(np.concatenate([b["image_id"] for b in batches]).tolist())
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(N_WEB))


def test_processes_and_workers_assemble_the_single_process_batches(synth):
    """Process k's batch is the k-th slice of the global batch one process would read, with
    the same rows in the same order and the same augmentation, whatever the worker count: a
    multi-host run trains exactly like a single-host one."""
    single = _take(iter(_loader(synth, randaug=True)), 8)  # 8 batches of 8 > one epoch of 48
    parts = [_take(iter(_loader(synth, randaug=True, shard_index=k, shard_count=2,
                                worker_count=2 * k)), 8) for k in range(2)]
    for s, a, b in zip(single, *parts):
        for key in s:
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), s[key])


def test_mixed_sources_are_concatenated_with_unique_ids(synth):
    data_dir, name = synth
    loader = make_train_loader(data_dir, [(name, "train_web"), (name, "train_clean")], global_batch_size=3,
                               image_size=32, num_epochs=1)
    assert loader.num_records == N_WEB + 45
    ids = np.concatenate([b["image_id"] for b in loader])
    assert sorted(set(ids.tolist())) == list(range(N_WEB + 9))  # train_clean images: 48..56, 5 pairs each
    assert np.bincount(ids)[N_WEB:].tolist() == [5] * 9


def _red_blue_dataset(tmp_path) -> tuple[str, str]:
    """One image, a red square left of a blue circle, captioned so."""
    scene = synthetic.Scene(96, "gray", (1.0, 0.0, 0.0), 0, (
        synthetic.Shape("square", "red", "large", 25.0, 48.0, 15.0),
        synthetic.Shape("circle", "blue", "large", 70.0, 48.0, 15.0)))
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.jpg").write_bytes(synthetic.encode_jpeg(synthetic.render(scene)))
    ann = tmp_path / "rb.json"
    ann.write_text(json.dumps([{"image": "x.jpg", "caption": "a red square to the left of a blue circle"}] * 8))
    data_dir = str(tmp_path / "tfds")
    prepare.build(prepare.make_builder("json", data_dir, annotations=[str(ann)], image_root=str(tmp_path / "img")))
    return data_dir, "blip_pairs/rb"


def test_flip_swaps_left_and_right_in_the_caption(tmp_path):
    assert transforms.swap_left_right("a left of b, right of c; leftover") == "a right of b, left of c; leftover"
    data_dir, name = _red_blue_dataset(tmp_path)
    tok = BlipTokenizer()
    outcomes = set()
    for flip in ("swap", "plain"):
        loader = make_train_loader(data_dir, name, "train", global_batch_size=8, image_size=48, scale=(1.0, 1.0),
                                   randaug=False, flip=flip, seed=1)
        batch = next(iter(loader))
        for image, ids in zip(batch["image"], batch["text_ids"]):
            pixels = image * STD + MEAN
            red_x = np.nonzero((pixels[..., 0] > 0.7) & (pixels[..., 2] < 0.3))[1].mean()
            blue_x = np.nonzero((pixels[..., 2] > 0.7) & (pixels[..., 0] < 0.3))[1].mean()
            text = tok.decode(ids)
            says_left = "red square to the left of" in text
            assert says_left or "red square to the right of" in text, text
            outcomes.add((flip, red_x < blue_x, says_left))
    # swap: the caption always matches the picture, mirrored or not; plain (BLIP): it does not
    assert {o for o in outcomes if o[0] == "swap"} == {("swap", True, True), ("swap", False, False)}
    assert ("plain", False, True) in outcomes


def test_augmentation_ops():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(60, 200, (40, 50, 3), np.uint8))  # not full range: AutoContrast acts
    for op in transforms.RANDAUG_OPS:
        out = transforms._apply(img, op, 5, np.random.default_rng(1))
        assert out.size == img.size and out.mode == "RGB"
        changed = not np.array_equal(np.asarray(out), np.asarray(img))
        # BLIP's enhance mapping gives factor 0.1 + 1.8 * 5 / 10 = 1.0 at M=5: identity
        assert changed == (op not in ("Identity", "Brightness", "Sharpness")), op
    a = transforms.rand_augment(img, np.random.default_rng(3))
    assert np.array_equal(np.asarray(a), np.asarray(transforms.rand_augment(img, np.random.default_rng(3))))
    for _ in range(200):
        left, top, w, h = transforms.crop_box(500, 375, (0.2, 1.0), rng)
        assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 375
        assert 0.2 * 0.97 <= w * h / (500 * 375) <= 1.0 and 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03


def test_eval_data_keeps_every_reference_with_its_image(synth):
    data_dir, name = synth
    data = make_eval_data(data_dir, name, "val", image_size=32, max_tokens=35)
    assert data.images.shape == (4, 32, 32, 3) and data.images.dtype == np.uint8
    assert len(data.texts) == 20 and data.text_ids.shape == (20, 35)
    assert data.text_to_image.tolist() == [i // 5 for i in range(20)]
    assert data.image_to_texts == [list(range(5 * i, 5 * i + 5)) for i in range(4)]
    assert data.image_ids.tolist() == list(range(N_WEB + 9, N_WEB + 13)) and not data.skipped
    batches = list(data.image_batches(3))
    assert [b["valid"].tolist() for b in batches] == [[True] * 3, [True, False, False]]
    assert batches[1]["image"].shape == (3, 32, 32, 3)
    # the evaluation transform is blip_jax.image.preprocess (bicubic resize + normalise)
    record = tfds.data_source(name, split="val", data_dir=data_dir)[0]
    expected = preprocess(Image.open(io.BytesIO(record["image"])), 32)
    np.testing.assert_allclose(batches[0]["image"][0], expected, atol=1e-6)


def _corrupt_dataset(tmp_path, n_good: int) -> tuple[str, str]:
    """A json dataset written without the decode check, so corrupt images reach the pipeline."""
    (tmp_path / "img").mkdir(parents=True)
    entries = []
    for i in range(n_good + 1):
        buf = io.BytesIO()
        Image.fromarray(np.full((20, 20, 3), 20 * i, np.uint8)).save(buf, format="JPEG")
        data = buf.getvalue()
        if i < n_good:
            (tmp_path / "img" / f"ok{i}.jpg").write_bytes(data)
            entries.append({"image": f"ok{i}.jpg", "caption": f"image {i}"})
    (tmp_path / "img" / "bad1.jpg").write_bytes(data[:100])  # truncated
    (tmp_path / "img" / "bad2.jpg").write_bytes(b"<html>not found</html>")
    entries += [{"image": "bad1.jpg", "caption": "t"}, {"image": "bad2.jpg", "caption": "g"}]
    ann = tmp_path / "c.json"
    ann.write_text(json.dumps(entries))
    data_dir = str(tmp_path / "tfds")
    prepare.build(prepare.make_builder("json", data_dir, annotations=[str(ann)], image_root=str(tmp_path / "img"),
                                       verify_images=False))
    return data_dir, "blip_pairs/c"


def test_corrupt_images_at_pipeline_time_are_skipped_counted_and_named(tmp_path, caplog):
    data_dir, name = _corrupt_dataset(tmp_path, n_good=6)
    # Seed 2 puts no bad record after the last good one: a skip at the very end of a finite
    # stream is logged (below) but has no later batch to carry it into `skipped`.
    loader = make_train_loader(data_dir, name, "train", global_batch_size=2, image_size=16,
                               num_epochs=1, seed=2)
    it = iter(loader)
    with caplog.at_level(logging.WARNING, logger="blip_jax.data.pipeline"):
        batches = list(it)
    assert sorted(np.concatenate([b["image_id"] for b in batches]).tolist()) == list(range(6))
    assert it.skipped == 2
    logged = caplog.text
    assert "bad1.jpg" in logged and "bad2.jpg" in logged and "not a readable image" in logged


def test_a_pipeline_that_yields_nothing_fails_clearly(tmp_path):
    data_dir, name = _corrupt_dataset(tmp_path / "none", n_good=0)
    for epochs in (1, None):  # also when repeating forever
        with pytest.raises(DataError, match=r"2 records in a row were unusable, e.g. blip_pairs/c:train\[\d\] \(bad"):
            next(iter(make_train_loader(data_dir, name, "train", global_batch_size=1, image_size=16,
                                        num_epochs=epochs)))
    with pytest.raises(DataError, match="no usable image"):
        make_eval_data(data_dir, name, "train", image_size=16)
    with pytest.raises(DataError, match="no dataset 'blip_pairs/nothing'"):
        make_train_loader(data_dir, "blip_pairs/nothing", "train", global_batch_size=1, image_size=16)
    data_dir, name = _corrupt_dataset(tmp_path / "one", n_good=1)  # 1 usable record < the batch of 2
    with pytest.raises(DataError, match="produced no batch"):
        next(iter(make_train_loader(data_dir, name, "train", global_batch_size=2, image_size=16, num_epochs=1)))


def test_scan_covers_every_record_once_in_equal_padded_shards(synth):
    data_dir, name = synth
    rows = []
    for index in range(3):
        batches = list(scan_records(data_dir, name, "train_web", batch_size=5, image_size=32,
                                    shard_index=index, shard_count=3))
        assert len(batches) == 4  # ceil(ceil(48 / 3) / 5) for every shard
        for b in batches:
            assert b["image"].shape == (5, 32, 32, 3) and b["text_ids"].shape == (5, 30)
            rows += [(int(i), str(c), int(n)) for i, c, n, v in zip(b["index"], b["caption"], b["noise"], b["valid"]) if v]
    assert sorted(r[0] for r in rows) == list(range(N_WEB))
    labels = {i: n for i, _, n in rows}
    cfg = synthetic.SyntheticConfig(num_images=N_WEB, seed=0)
    assert [labels[i] for i in range(N_WEB)] == synthetic.noise_kinds(cfg).tolist()


def test_exported_images_feed_a_bootstrapped_json_dataset(synth, tmp_path):
    """The CapFilt round trip: images out of the synthetic data, new captions in BLIP's format."""
    data_dir, name = synth
    out = tmp_path / "images"
    assert export_images(data_dir, name, "train_clean", str(out)) == 9  # 45 pairs, 9 images
    ann = tmp_path / "capfilt.json"
    ann.write_text(json.dumps([{"image": f"train_clean/{i:06d}.jpg", "caption": f"synthetic caption {i}"}
                               for i in range(9)]))
    prepare.build(prepare.make_builder("json", data_dir, annotations=[str(ann)], image_root=str(out)))
    loader = make_train_loader(data_dir, [("blip_pairs/capfilt", "train"), (name, "train_clean")],
                               global_batch_size=6, image_size=32, num_epochs=1)
    ids = np.concatenate([b["image_id"] for b in loader])
    assert len(ids) == 54 and len(set(ids.tolist())) == 18  # the two datasets' ids do not collide
