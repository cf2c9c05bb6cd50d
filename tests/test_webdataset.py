"""webdataset shards (img2dataset's layout) -> samples -> a TFDS dataset -> training batches.

The shards hold every defect the reader must name: a corrupt JPEG, a missing caption, a missing
image, corrupt JSON, a non-UTF-8 caption, and a final shard cut off mid-member; the parquet
index of the cut shard still lists all of its samples.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from blip_jax.data import prepare, webdataset
from blip_jax.data.pipeline import make_train_loader
from blip_jax.data.report import DataError

HAVE_PYARROW = importlib.util.find_spec("pyarrow") is not None


def _jpeg(seed: int, size: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _sample(key: str, caption: str | bytes | None = "a photo", image: bytes | None = b"", meta: bytes | None = b"",
            ) -> list[tuple[str, bytes]]:
    """Members of one sample as img2dataset writes them; None leaves a member out, b"" means the
    default (a good JPEG, the json with key/url/caption)."""
    members = []
    if image is not None:
        members.append((f"{key}.jpg", image or _jpeg(int(key))))
    if caption is not None:
        members.append((f"{key}.txt", caption if isinstance(caption, bytes) else caption.encode()))
    if meta is not None:
        default = {"key": key, "url": f"http://x/{key}.jpg", "status": "success", "width": 40, "height": 40,
                   "caption": caption if isinstance(caption, str) else None}
        members.append((f"{key}.json", meta or json.dumps(default).encode()))
    return members


def _write_shard(path, samples: list[list[tuple[str, bytes]]], cut: int | None = None, index_rows: int | None = None
                 ) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for members in samples:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue()[:cut])
    if HAVE_PYARROW and index_rows is not None:  # img2dataset's index: failed downloads are rows too
        import pyarrow as pa
        import pyarrow.parquet as pq
        status = ["success"] * index_rows + ["failed_to_download"]
        pq.write_table(pa.table({"key": [f"{i:09d}" for i in range(len(status))], "status": status}),
                       str(path).removesuffix(".tar") + ".parquet")


# Expected per shard: (key, what iter_samples says: "ok" or the skip kind)
SHARD0 = [("000000000", "ok"), ("000000001", "not a readable image"), ("000000002", "missing caption"),
          ("000000003", "ok"), ("000000004", "ok")]
SHARD1 = [("000010000", "missing image"), ("000010001", "ok"), ("000010002", "corrupt JSON"),
          ("000010003", "caption not UTF-8"), ("000010004", "ok"), ("000010005", "empty caption"),
          ("000010006", "ok")]
SHARD2 = [("000020000", "ok"), ("000020001", "ok"), ("", "truncated archive")]  # cut in 000020002's image


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("cc_tiny")
    _write_shard(root / "00000.tar", [
        _sample("000000000", "a red square"),
        _sample("000000001", "cut short", image=_jpeg(1, 64)[:300]),  # corrupt (truncated) JPEG
        _sample("000000002", caption=None, meta=json.dumps({"key": "000000002"}).encode()),
        _sample("000000003", caption=None, meta=json.dumps({"key": "000000003", "caption": "only in json"}).encode()),
        _sample("000000004", "four"),
    ], index_rows=5)
    _write_shard(root / "00001.tar", [
        _sample("000010000", "no picture", image=None),
        _sample("000010001", "fine"),
        _sample("000010002", "bad json", meta=b'{"key": "000010002", '),
        _sample("000010003", "caf\xe9".encode("latin-1")),
        _sample("000010004", "also fine"),
        _sample("000010005", " ... "),  # cleans to nothing
        _sample("000010006", "last one"),
    ])  # no parquet index: not checked
    last = [_sample(f"0000200{i:02d}", f"cut {i}") for i in range(4)]
    whole = sum(1 + -(-len(d) // 512) for m in last[:2] for _, d in m) * 512  # headers + data of two samples
    _write_shard(root / "00002.tar", last, cut=whole + 1024, index_rows=4)
    return root


def _outcomes(items) -> list[tuple[str, str]]:
    return [(i.key, "ok") if isinstance(i, webdataset.Sample) else (i.key, i.reason.split(" (")[0]) for i in items]


def test_expand_shards(tmp_path):
    for i in range(12):
        (tmp_path / f"{i:05d}.tar").touch()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.tar").touch()
    d = str(tmp_path)
    names = lambda paths: [os.path.relpath(p, d) for p in paths]  # noqa: E731
    assert names(webdataset.expand_shards(f"{d}/{{00000..00002}}.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert names(webdataset.expand_shards(f"{d}/{{00010..00011}}.tar,{d}/{{00001,00003}}.tar::{d}/x/*.tar")) == [
        "00001.tar", "00003.tar", "00010.tar", "00011.tar", "x/a.tar"]
    assert names(webdataset.expand_shards([f"{d}/0000[0-1].tar", f"{d}/00001.tar"])) == ["00000.tar", "00001.tar"]
    assert webdataset._braces("s{8..10}-{a,b{1..2}}") == ["s8-a", "s8-b1", "s8-b2", "s9-a", "s9-b1", "s9-b2",
                                                          "s10-a", "s10-b1", "s10-b2"]
    assert webdataset._braces("{03..1}") == ["03", "02", "01"]
    with pytest.raises(DataError, match=r"2 of 14 files missing: .*00012\.tar, .*00013\.tar"):
        webdataset.expand_shards(f"{d}/{{00000..00013}}.tar")
    with pytest.raises(DataError, match=r"shard pattern .*\*\.tgz' matches no file"):
        webdataset.expand_shards(f"{d}/*.tgz")
    with pytest.raises(DataError, match="without its"):
        webdataset.expand_shards(f"{d}/{{00000..00002.tar")


def test_iter_samples_yields_and_names_skips(shards):
    for name, expected in [("00000.tar", SHARD0), ("00001.tar", SHARD1), ("00002.tar", SHARD2)]:
        assert _outcomes(webdataset.iter_samples(str(shards / name))) == expected, name
    good = {s.key: s for s in webdataset.iter_samples(str(shards / "00000.tar")) if isinstance(s, webdataset.Sample)}
    assert good["000000003"].caption == "only in json"  # no .txt: the json's caption
    assert good["000000000"].image_id == 0 and good["000000004"].image_id == 4
    assert good["000000000"].meta["url"] == "http://x/000000000.jpg"
    *_, cut = webdataset.iter_samples(str(shards / "00002.tar"))
    assert "after key '000020001'; '000020002' and the rest of the shard lost" in cut.reason
    # without the decode check the corrupt JPEG is kept (the pipeline's decode drops it later)
    unchecked = _outcomes(webdataset.iter_samples(str(shards / "00000.tar"), verify=False))
    assert unchecked[1] == ("000000001", "ok")


def test_shard_reader_checks_ids_and_index(tmp_path):
    _write_shard(tmp_path / "a.tar", [_sample("000000005"), _sample("000000007")])
    _write_shard(tmp_path / "b.tar", [_sample("000000006")])  # a second run's keys, inside a's range
    with pytest.raises(DataError, match=r"b\.tar \(6\.\.6\) overlap those of .*a\.tar \(5\.\.7\)"):
        list(webdataset.ShardReader([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]))
    _write_shard(tmp_path / "c.tar", [_sample("000000001"), _sample("000000001")])
    (tmp_path / "c.parquet").write_bytes(b"not parquet")  # only a cross-check: reported, the shard still reads
    assert _outcomes(x for _, x in webdataset.ShardReader([str(tmp_path / "c.tar")])) == [
        ("000000001", "ok"), ("000000001", "duplicate key")] + [("", "unreadable parquet index")] * HAVE_PYARROW
    buf = io.BytesIO(_jpeg(0))
    with tarfile.open(tmp_path / "d.tar", "w") as tar:
        info = tarfile.TarInfo("img_a.jpg")
        info.size = len(buf.getvalue())
        tar.addfile(info, buf)
        info, txt = tarfile.TarInfo("img_a.txt"), b"caption"
        info.size = len(txt)
        tar.addfile(info, io.BytesIO(txt))
    with pytest.raises(DataError, match=r"d\.tar/img_a: key 'img_a' is not a decimal number"):
        list(webdataset.iter_samples(str(tmp_path / "d.tar")))


def test_prepare_writes_dataset_that_trains(shards, tmp_path, capsys):
    data_dir = str(tmp_path / "tfds")
    rc = prepare.main(["--source", "webdataset", "--data_dir", data_dir, "--shards", f"{shards}/{{00000..00002}}.tar"])
    out = capsys.readouterr().out
    assert rc == 0
    name = f"blip_webdataset/{shards.name}"  # default name: the shards' folder
    report = prepare.load_report(data_dir, name)
    # every skip, with its shard and key (a cut shard: the shard itself) and its reason kind
    skipped = [(os.path.relpath(s["file"], shards), s["reason"].split(" (")[0]) for s in report["skipped"]]
    per_shard = [("00000.tar", SHARD0), ("00001.tar", SHARD1), ("00002.tar", SHARD2)]
    expected = [(f"{n}/{k}" if k else n, kind) for n, rows in per_shard for k, kind in rows if kind != "ok"]
    if HAVE_PYARROW:  # the cut shard's index lists 4 samples, 2 were read; shard 0's count matches
        expected.append(("00002.tar", "sample count differs from the parquet index"))
        assert report["index_checked_shards"] == 2
    assert skipped == expected
    assert all(s["split"] == "train" for s in report["skipped"])
    for file, kind in expected:
        assert any(file in line and kind in line for line in out.splitlines()), (file, kind, out)
    keys = [k for rows in (SHARD0, SHARD1, SHARD2) for k, kind in rows if kind == "ok"]
    assert report["splits"]["train"] == {"records": 8, "images": 8, "min_image_id": 0, "max_image_id": 20001}

    train = tfds.data_source(name, data_dir=data_dir)["train"]
    recs = [train[i] for i in range(len(train))]
    assert [r["image_path"].decode() for r in recs] == [f"{i // 10000:05d}.tar/{i:09d}" for i in map(int, keys)]
    assert [int(r["image_id"]) for r in recs] == [int(k) for k in keys]
    assert recs[0]["captions"] == [b"a red square"] and recs[2]["captions"] == [b"four"]
    assert recs[0]["image"] == _jpeg(0)  # the member's bytes, as stored

    loader = make_train_loader(data_dir, name, "train", global_batch_size=4, image_size=32, num_epochs=1, seed=0)
    batches = list(loader)
    assert len(batches) == 2
    assert batches[0]["image"].shape == (4, 32, 32, 3) and batches[0]["text_ids"].shape == (4, 30)
    assert sorted(np.concatenate([b["image_id"] for b in batches]).tolist()) == sorted(int(k) for k in keys)


def _records(data_dir: str, name: str) -> list[dict]:
    train = tfds.data_source(name, data_dir=data_dir)["train"]
    return [{k: (list(v) if k == "captions" else v) for k, v in train[i].items()} for i in range(len(train))]


def test_prepare_on_beam_is_the_in_process_build(shards, tmp_path, capsys):
    """The same shards built in-process and on Beam's DirectRunner with 2 worker processes (one
    shard per work item): the same records in the same order, the same report (each skip named),
    and the Beam build trains."""
    spec = f"{shards}/{{00000..00002}}.tar"
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    assert prepare.main(["--source", "webdataset", "--data_dir", local, "--shards", spec, "--name", "cc"]) == 0
    # multi_processing: 2 SDK worker processes (they start in this sandbox; in_memory would run
    # the work items one after the other in this process)
    assert prepare.main(["--source", "webdataset", "--data_dir", beam, "--shards", spec, "--name", "cc",
                         "--beam_runner", "DirectRunner",
                         "--beam_pipeline_options", "direct_num_workers=2,direct_running_mode=multi_processing"]) == 0
    out = capsys.readouterr().out
    name = "blip_webdataset/cc"
    want, got = prepare.load_report(local, name), prepare.load_report(beam, name)
    assert got["splits"] == want["splits"] and got["splits"]["train"]["records"] == 8
    assert got["skipped"] == want["skipped"] and got["skip_counts"] == want["skip_counts"]
    assert got["index_checked_shards"] == want["index_checked_shards"] and got["shards"] == 3
    corrupt = f"{shards}/00000.tar/000000001"  # the truncated JPEG, named in both reports and printed
    assert any(s["file"] == corrupt and s["reason"].startswith("not a readable image") for s in got["skipped"])
    assert corrupt in out
    assert got["beam_counters"] == {"samples": 8, "skipped": len(got["skipped"])} and "beam_counters" not in want
    # every record the same (bytes, caption, id, path), in the same order
    a, b = _records(local, name), _records(beam, name)
    assert len(a) == len(b) == 8
    assert {int(r["image_id"]): r for r in b}.keys() == {int(r["image_id"]): r for r in a}.keys()
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys() and all(np.array_equal(ra[k], rb[k]) for k in ra), ra["image_id"]
    info = tfds.builder_from_directory(prepare.dataset_dir(beam, name)).info
    assert info.splits["train"].num_examples == 8 and info.file_format.value == "array_record"

    loader = make_train_loader(beam, name, "train", global_batch_size=4, image_size=32, num_epochs=1, seed=0)
    batches = list(loader)
    assert len(batches) == 2 and batches[1]["image"].shape == (4, 32, 32, 3)
    assert sorted(np.concatenate([x["image_id"] for x in batches]).tolist()) == sorted(int(r["image_id"]) for r in a)
    _train_two_steps(beam, name, str(tmp_path / "run"))


def _train_two_steps(data_dir: str, name: str, workdir: str) -> None:
    """Two steps of the pre-training step (ITC + ITM + LM) of a small model on the dataset."""
    from blip_jax.experiments import tiny
    from blip_jax.train.trainer import train

    c = tiny.pretrain(steps=2)
    c.data.data_dir, c.data.train_sources = data_dir, [(name, "train")]
    c.data.workers, c.data.randaugment, c.eval.every_steps = 0, False, 0
    c.batch_size, c.loss.queue_size, c.log_every_steps, c.checkpoint_every_steps = 8, 16, 1, 2
    c.model.vision.update(image_size=32, depth=1, width=32, mlp_dim=64)
    c.model.text.update(num_layers=1, hidden_size=32, intermediate_size=64)
    c.model.embed_dim, c.data.max_tokens = 16, 16
    train(c, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    steps = [r for r in logged if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(np.isfinite(r[k]) for r in steps for k in ("loss_itc", "loss_itm", "loss_lm"))


def test_beam_build_errors(tmp_path, capsys):
    """A shard's DataError raised in a Beam worker, ids of two shards that overlap, and a split
    left empty fail as in-process; Beam flags are checked before anything is read."""
    run = lambda *args: prepare.main(["--data_dir", str(tmp_path / "out"), *args])  # noqa: E731
    in_memory = ["--beam_runner", "DirectRunner", "--beam_pipeline_options", "direct_running_mode=in_memory"]
    _write_shard(tmp_path / "a.tar", [_sample("000000001")])
    buf = io.BytesIO(_jpeg(0))
    with tarfile.open(tmp_path / "b.tar", "w") as tar:
        for name, data in [("img_a.jpg", buf.getvalue()), ("img_a.txt", b"caption")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert run("--source", "webdataset", "--shards", f"{tmp_path}/a.tar,{tmp_path}/b.tar", *in_memory) == 2
    assert "b.tar/img_a: key 'img_a' is not a decimal number" in capsys.readouterr().err
    _write_shard(tmp_path / "d.tar", [_sample("000000000"), _sample("000000003")])  # a's id 1 inside d's 0..3
    assert run("--source", "webdataset", "--shards", f"{tmp_path}/a.tar,{tmp_path}/d.tar", *in_memory) == 2
    assert "overlap those of" in capsys.readouterr().err  # the cross-shard check, on the workers' reports
    _write_shard(tmp_path / "c.tar", [_sample("000000002", caption=None, meta=None)])
    assert run("--source", "webdataset", "--shards", f"{tmp_path}/c.tar", "--name", "empty", *in_memory) == 2
    err = capsys.readouterr().err
    assert "has no usable example (1 skipped:" in err and "c.tar/000000002: missing caption" in err
    wds = ["--source", "webdataset", "--shards", f"{tmp_path}/a.tar"]
    for args, message in [
        (["--source", "synthetic", "--beam_runner", "DirectRunner"], "only --source webdataset builds on Apache Beam"),
        ([*wds, "--beam_pipeline_options=--x=1"], "'--x=1' is not key=value"),
        ([*wds, "--beam_pipeline_options", "direct_num_workers=two"], "invalid int value: 'two'"),
        ([*wds, "--beam_pipeline_options", "num_wokers=2"], "unknown Beam option(s) num_wokers"),
        ([*wds, "--beam_runner", "NoSuchRunner"], "Unexpected pipeline runner: NoSuchRunner")]:
        assert run(*args) == 2, args
        assert message in capsys.readouterr().err, args
