"""TFDS builders on small generated inputs: BLIP-format JSON, Karpathy COCO/Flickr, the CLI.

Every input set holds a corrupt JPEG (truncated), a non-image, a missing file and an empty
caption: they must be skipped, and the report must name each with its reason.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from blip_jax.data import prepare
from blip_jax.data.report import DataError


def _jpeg(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(sum(color))
    pixels = np.clip(np.array(color) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    files = {"a.jpg": _jpeg((200, 30, 30)), "sub/b.jpg": _jpeg((30, 30, 200)), "c.jpg": _jpeg((30, 200, 30)),
             "truncated.jpg": _jpeg((90, 90, 90), (64, 64))[:300], "garbage.jpg": b"this is not an image"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def _write(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def _skips(report) -> dict[str, str]:
    return {os.path.basename(s["file"]): s["reason"] for s in report["skipped"]}


def test_json_builder_writes_pairs_and_references_and_reports_skips(tmp_path, image_root, capsys):
    train = _write(tmp_path / "my_pairs.json", [
        {"image": "a.jpg", "caption": "A red picture!!"},
        {"image": "sub/b.jpg", "caption": ["a blue picture", "blue again"], "image_id": "coco_7"},
        {"image": "truncated.jpg", "caption": "cut short"},
        {"image": "garbage.jpg", "caption": "not a jpeg"},
        {"image": "missing.jpg", "caption": "gone"},
        {"image": "c.jpg", "caption": " ... "},  # cleans to nothing
    ])
    val = _write(tmp_path / "val.json", [
        {"image": "a.jpg", "caption": ["ref one", "ref two", ""]},
        {"image": "c.jpg", "caption": "ref three"},
        {"image": "c.jpg", "caption": "ref four"},  # same image: merged into one record
    ])
    data_dir = str(tmp_path / "tfds")
    rc = prepare.main(["--source", "json", "--data_dir", data_dir, "--annotations", train, f"val={val}",
                       "--image_root", str(image_root)])
    out = capsys.readouterr().out
    assert rc == 0
    # the printed report names every skipped file with its reason
    for name, reason in [("truncated.jpg", "not a readable image"), ("garbage.jpg", "not a readable image"),
                         ("missing.jpg", "missing image file"), ("c.jpg", "empty caption")]:
        assert any(name in line and reason in line for line in out.splitlines()), (name, out)
    assert "entry 5" in out and "skipped 5 item(s)" in out, out

    report = prepare.load_report(data_dir, "blip_pairs/my_pairs")
    skips = _skips(report)
    assert sorted(skips) == ["a.jpg", "c.jpg", "garbage.jpg", "missing.jpg", "truncated.jpg"]
    for name, entry in [("truncated.jpg", 2), ("garbage.jpg", 3)]:
        assert skips[name].startswith("not a readable image (") and skips[name].endswith(f"({train}: entry {entry})")
    assert skips["missing.jpg"] == f"missing image file ({train}: entry 4)"
    assert skips["c.jpg"] == f"empty caption ({train}: entry 5, caption 0)"
    assert skips["a.jpg"] == f"empty caption ({val}: entry 0, caption 2)"
    assert report["splits"]["train"] == {"records": 3, "images": 2, "min_image_id": 0, "max_image_id": 1}

    ds = tfds.data_source("blip_pairs/my_pairs", data_dir=data_dir)
    train_recs = [ds["train"][i] for i in range(len(ds["train"]))]
    assert [r["captions"] for r in train_recs] == [[b"A red picture!!"], [b"a blue picture"], [b"blue again"]]
    assert train_recs[0]["image"] == (image_root / "a.jpg").read_bytes()  # stored as the original bytes
    assert [r["image_path"] for r in train_recs] == [b"a.jpg", b"sub/b.jpg", b"sub/b.jpg"]
    assert [r["image_id"] for r in train_recs] == [0, 1, 1]
    val_recs = [ds["val"][i] for i in range(len(ds["val"]))]
    assert [r["captions"] for r in val_recs] == [[b"ref one", b"ref two"], [b"ref three", b"ref four"]]
    # ids by first appearance over all entries (train before val), skipped ones too: an image keeps
    # its id when a broken neighbour is fixed; c.jpg first appeared as train entry 5
    assert [r["image_id"] for r in val_recs] == [0, 5]


def test_written_dataset_reads_back_without_blip_jax(tmp_path, image_root):
    ann = _write(tmp_path / "pairs.json", [{"image": "a.jpg", "caption": "red"}, {"image": "c.jpg", "caption": "green"}])
    data_dir = str(tmp_path / "tfds")
    prepare.build(prepare.make_builder("json", data_dir, annotations=[ann], image_root=str(image_root), name="tiny"))
    code = ("import tensorflow_datasets as tfds, sys; ds = tfds.data_source('blip_pairs/tiny', data_dir=sys.argv[1]);"
            "print(len(ds['train']), ds['train'][1]['captions'][0].decode(), 'blip_jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, data_dir], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2", "green", "False"]


def _karpathy(tmp_path, flickr: bool) -> str:
    def img(i, filename, split, sentences):
        item = {"filename": filename, "split": split, "sentences": [{"raw": s, "tokens": s.split()} for s in sentences],
                "imgid": i}
        if not flickr:
            item.update(filepath="", cocoid=1000 + i)
        return item
    return _write(tmp_path / "dataset.json", {"dataset": "flickr30k" if flickr else "coco", "images": [
        img(0, "a.jpg", "train", ["a red one", "red again"]),
        img(1, "sub/b.jpg", "restval", ["blue", ""]),
        img(2, "missing.jpg", "train", ["lost"]),
        img(3, "truncated.jpg", "val", ["cut"]),
        img(4, "c.jpg", "val", ["green 1", "green 2", "green 3"]),
        img(5, "a.jpg", "test", ["t1", "t2"]),
    ]})


@pytest.mark.parametrize("source", ["coco_karpathy", "flickr_karpathy"])
def test_karpathy_builders(tmp_path, image_root, source, capsys):
    ann = _karpathy(tmp_path, flickr=source == "flickr_karpathy")
    data_dir = str(tmp_path / "tfds")
    assert prepare.main(["--source", source, "--data_dir", data_dir, "--annotations", ann,
                         "--image_root", str(image_root)]) == 0
    out = capsys.readouterr().out
    assert "missing.jpg: missing image file" in out and "truncated.jpg: not a readable image" in out
    assert "sub/b.jpg: empty caption" in out, out
    name = f"blip_{source}"
    ds = tfds.data_source(name, data_dir=data_dir)
    offset = 0 if source == "flickr_karpathy" else 1000  # Karpathy imgid / COCO id
    train = [ds["train"][i] for i in range(len(ds["train"]))]
    # train = train + restval, one record per caption
    assert [(r["image_id"] - offset, r["captions"]) for r in train] == [
        (0, [b"a red one"]), (0, [b"red again"]), (1, [b"blue"])]
    val = [ds["val"][i] for i in range(len(ds["val"]))]
    assert [(r["image_id"] - offset, r["captions"]) for r in val] == [(4, [b"green 1", b"green 2", b"green 3"])]
    test = ds["test"][0]
    assert (test["image_id"] - offset, test["captions"], test["image_path"]) == (5, [b"t1", b"t2"], b"a.jpg")
    assert len(prepare.load_report(data_dir, name)["skipped"]) == 3


def test_annotation_errors_name_the_file_and_position(tmp_path, image_root, capsys):
    bad_syntax = tmp_path / "bad.json"
    bad_syntax.write_text('[\n {"image": "a.jpg", "caption": "x"},\n {"image": "b.jpg" "caption": "y"}\n]')
    code = prepare.main(["--source", "json", "--data_dir", str(tmp_path / "d"), "--annotations", str(bad_syntax),
                         "--image_root", str(image_root)])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad_syntax}: invalid JSON at line 3 column 20" in err, err

    cases = [([{"image": "a.jpg", "caption": "x"}, {"image": "a.jpg"}], "entry 1: missing 'caption'"),
             ([{"image": "a.jpg", "caption": 3}], "entry 0: 'caption' must be a string or a list of strings"),
             ({"image": "a.jpg"}, "expected a JSON list")]
    for obj, message in cases:
        path = _write(tmp_path / "wrong.json", obj)
        with pytest.raises(DataError, match=message) as e:
            prepare.make_builder("json", str(tmp_path / "d"), annotations=[path], image_root=str(image_root))
        assert path in str(e.value)
    path = _write(tmp_path / "k.json", {"images": [{"filename": "a.jpg", "split": "train", "sentences": []},
                                                    {"filename": "a.jpg", "split": "dev", "sentences": []}]})
    with pytest.raises(DataError, match=r"k.json: images\[0\]: needs an integer 'cocoid' or 'imgid'"):
        prepare.make_builder("coco_karpathy", str(tmp_path / "d"), annotations=[path], image_root=str(image_root))


def test_dataset_that_yields_nothing_fails_clearly(tmp_path, image_root):
    ann = _write(tmp_path / "allbad.json", [{"image": "missing.jpg", "caption": "x"},
                                            {"image": "garbage.jpg", "caption": "y"}])
    builder = prepare.make_builder("json", str(tmp_path / "d"), annotations=[ann], image_root=str(image_root))
    with pytest.raises(DataError, match=r"split 'train' from .*allbad.json has no usable example \(2 skipped: "
                                        r".*missing.jpg: missing image file"):
        prepare.build(builder)
    with pytest.raises(DataError, match="no dataset 'blip_pairs/allbad'"):  # nothing half-written is left behind
        prepare.load_report(str(tmp_path / "d"), "blip_pairs/allbad")
