"""CapFilt at web scale: the webdataset output (tar shards as img2dataset lays them out) reads back
through blip_jax.data.webdataset and `prepare --source webdataset` to exactly the pairs of the
array_record output, and a run stopped part-way resumes with another number of processes
(2 -> 3 -> 1, simulated in one process) to the uninterrupted run's result, every record computed
once. Same micro models, data and settings as tests/test_capfilt.py (its fixtures)."""

import glob
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

import blip_jax.capfilt as capfilt
from blip_jax.capfilt import output, webdataset_output as wds
from blip_jax.data import prepare, webdataset
from blip_jax.data.sources import RecordSource
import test_capfilt
from test_capfilt import N_WEB, SETTINGS, _cli, _config, _same_results
from train_utils import run_two_processes

env = test_capfilt.env  # its fixture: data, captioner and filter checkpoints, threshold

PER_UNIT = SETTINGS["records_per_shard"]
PER_IMAGE = 1 + SETTINGS["num_captions"]
PLAN = output.UnitPlan(N_WEB, PER_UNIT)  # 8 units, the last of 2 records


def _shard_items(paths):
    """(key, image bytes, text, parsed json) of every sample of the shards, in order; no skips."""
    out = []
    for path in paths:
        for item in webdataset.iter_samples(path):
            assert isinstance(item, webdataset.Sample), (path, item)
            out.append((item.key, item.image, item.caption, item.meta))
    return out


@pytest.fixture(scope="module")
def uninterrupted(env):
    """One process, all 8 devices, both outputs: (workdir, summary, results)."""
    workdir = str(env[0] / "scale_ref")
    summary = capfilt.run(_config(env, output_name="scale_ref", output_format="both"), workdir)
    assert summary["finished"] and summary["images_computed_this_run"] == N_WEB
    return workdir, summary, output.load_results(workdir, N_WEB, PER_UNIT)


def test_webdataset_round_trip(env, uninterrupted, tmp_path):
    """The tar shards hold exactly the kept pairs of the TFDS output, in its order, with the source
    records' image bytes (not re-encoded); members sorted by name, keys index * 3 + slot; the
    project's reader (iter_samples, ShardReader) and `prepare --source webdataset` read them back
    to the same (image, text) pairs; each process's share of the shards is byte-identical."""
    workdir, summary, results = uninterrupted
    info = summary["webdataset"]
    shards = sorted(glob.glob(os.path.join(info["dir"], "*.tar")))
    assert [os.path.basename(s) for s in shards] == info["shards"] == \
        [f"{u:05d}.tar" for u in range(PLAN.num_units)]  # every unit keeps some pair here
    for path in shards:
        with tarfile.open(path) as tar:
            names = tar.getnames()
        assert names == sorted(names) and len(names) % 3 == 0
    items = _shard_items(shards)
    pairs = output.kept_pairs(results)
    assert info["samples"] == len(items) == len(pairs) == summary["pairs_kept"]
    for (key, image, text, meta), (index, caption, source, score) in zip(items, pairs):
        r = results[index]
        slot = 0 if source == "web" else 1 + [s["caption"] for s in r["synthetic"]].index(caption)
        assert key == f"{index * PER_IMAGE + slot:09d}" and int(key) // PER_IMAGE == index
        assert (text, meta["source"], meta["score"], meta["caption"]) == (caption, source, score, caption)
        assert (meta["index"], meta["image_id"], meta["image_path"]) == (index, r["image_id"], r["image_path"])
        assert meta["web"] == r["web"] and meta["synthetic"] == r["synthetic"]
    # The TFDS output: the same pairs, image bytes, order.
    ds = tfds.data_source(summary["dataset"], split="train", data_dir=env[1])
    assert len(ds) == len(items)
    for k, (key, image, text, meta) in enumerate(items):
        rec = ds[k]
        assert (rec["image"], rec["captions"][0].decode(), rec["source"].decode(), int(rec["image_id"])) == \
               (image, text, meta["source"], meta["image_id"])
    source = RecordSource(env[1], capfilt.job.resolve_sources(_config(env)))
    assert all(image == source[meta["index"]]["image"] for _, image, _, meta in items)
    assert {os.path.splitext(n)[1] for path in shards for n in tarfile.open(path).getnames()} == \
           {".jpg", ".json", ".txt"}  # the synthetic data's images are JPEG
    # ShardReader: no skip, disjoint key ranges; prepare --source webdataset: the same pairs.
    assert all(isinstance(s, webdataset.Sample) for _, s in webdataset.ShardReader(shards))
    data_dir = str(tmp_path / "data")
    builder = prepare.make_builder("webdataset", data_dir, shards=os.path.join(info["dir"], "*.tar"),
                                   name="capfilt_round_trip")
    report = prepare.build(builder)
    assert not report["skipped"]
    back = tfds.data_source(report["dataset"], split="train", data_dir=data_dir)
    assert [(r["image"], r["captions"][0].decode(), int(r["image_id"])) for r in back] == \
           [(image, text, int(key)) for key, image, text, _ in items]
    # Each of 2 processes writes its share (every other unit): the same bytes as one process.
    split = str(tmp_path / "split")
    for p in range(2):
        wds.write_shards(split, workdir, PLAN, output.assign(range(PLAN.num_units), p, 2),
                         lambda i: source[i]["image"], PER_IMAGE)
    for path in shards:
        with open(path, "rb") as a, open(os.path.join(split, os.path.basename(path)), "rb") as b:
            assert a.read() == b.read()


def test_resume_with_other_process_counts(env, uninterrupted):
    """2 simulated processes stop after 3 units, 3 processes take the rest and stop with 2 left,
    1 process finishes: every record computed exactly once over the runs, results identical to
    the uninterrupted run (captions, kept flags; scores within 1e-6) and so are the kept pairs and
    the webdataset shards."""
    workdir = str(env[0] / "hosts")
    config = _config(env, output_name="hosts", output_format="webdataset")
    computed = []

    def step(todo, p, n, max_units=None):
        s = capfilt.run(config, workdir, process_index=p, process_count=n, todo=todo, max_units=max_units)
        computed.append(s["images_computed_this_run"])
        return s

    todo = PLAN.todo(workdir)
    assert todo == list(range(8))
    assert not step(todo, 0, 2, max_units=2)["finished"]  # units 0, 2 of 0, 2, 4, 6
    assert not step(todo, 1, 2, max_units=1)["finished"]  # unit 1 of 1, 3, 5, 7
    assert PLAN.done(workdir) == {0, 1, 2}
    todo = PLAN.todo(workdir)  # 3 4 5 6 7: process 0 takes 3, 6; 1: 4, 7; 2: 5
    assert not step(todo, 0, 3, max_units=1)["finished"]
    assert not step(todo, 1, 3, max_units=1)["finished"]
    s = step(todo, 2, 3)
    assert PLAN.done(workdir) == {0, 1, 2, 3, 4, 5} and s == {**s, "finished": False, "units_done": 6}
    assert not glob.glob(os.path.join(workdir, "webdataset", "*.tar"))  # outputs wait for every unit
    summary = step(None, 0, 1)  # the real single process: lists the rest itself
    assert summary["finished"] and summary["units_computed_this_run"] == 2
    assert computed == [8, 4, 4, 4, 4, 6] and sum(computed) == N_WEB  # each record once
    ref_workdir, ref_summary, ref_results = uninterrupted
    results = output.load_results(workdir, N_WEB, PER_UNIT)
    _same_results(results, ref_results)
    strip = lambda pairs: [(i, text, src) for i, text, src, _ in pairs]  # noqa: E731
    assert strip(output.kept_pairs(results)) == strip(output.kept_pairs(ref_results))
    for key in ("images_seen", "web_kept", "synthetic_kept", "pairs_kept", "filter"):
        assert summary[key] == ref_summary[key]
    assert summary["dataset"] is None and summary["webdataset"]["shards"] == ref_summary["webdataset"]["shards"]
    got = _shard_items(sorted(glob.glob(os.path.join(workdir, "webdataset", "*.tar"))))
    want = _shard_items(sorted(glob.glob(os.path.join(ref_workdir, "webdataset", "*.tar"))))
    assert [g[:3] for g in got] == [w[:3] for w in want]
    np.testing.assert_allclose([g[3]["score"] for g in got], [w[3]["score"] for w in want], atol=1e-6, rtol=0)
    with open(os.path.join(workdir, "webdataset", wds.MANIFEST)) as f:
        manifest = json.load(f)
    assert manifest["origin"] == workdir and manifest["samples"] == len(got)
    # A finished job computes nothing more, with any process count; other settings are refused.
    assert step(None, 0, 1)["images_computed_this_run"] == 0
    with pytest.raises(ValueError, match="another CapFilt run"):  # another run's shard folder
        capfilt.run(_config(env, output_name="hosts2", output_format="webdataset",
                            webdataset_dir=os.path.join(workdir, "webdataset")), str(env[0] / "hosts2"))


@pytest.mark.slow
def test_two_real_processes_finish_a_one_process_run(env, uninterrupted):
    """Units 0-2 of the one-process run in the workdir, the CLI in 2 jax.distributed processes
    (loopback, 4 CPU devices each) finishes it: process 0's list of the 5 units left, each
    process computing and writing the shards of its share, then the outputs; results and shards
    as the uninterrupted run's. ~1 min."""
    ref_workdir, ref_summary, ref_results = uninterrupted
    workdir = str(env[0] / "distributed")
    os.makedirs(os.path.join(workdir, "results"))
    for u in range(3):
        shutil.copy(PLAN.path(ref_workdir, u), PLAN.path(workdir, u))
    command = _cli(workdir, _config(env, output_name="distributed")) + ["--config.output_format=webdataset"]
    run_two_processes(command, port=20000 + (os.getpid() + 11) % 20000, timeout=600)
    summary = output.read_json(os.path.join(workdir, output.SUMMARY_FILE))
    assert summary["processes"] == 2 and summary["images_computed_this_run"] == 10  # process 0's: 3, 5, 7
    _same_results(output.load_results(workdir, N_WEB, PER_UNIT), ref_results)
    got = _shard_items(sorted(glob.glob(os.path.join(workdir, "webdataset", "*.tar"))))
    want = _shard_items(sorted(glob.glob(os.path.join(ref_workdir, "webdataset", "*.tar"))))
    assert [g[:3] for g in got] == [w[:3] for w in want]


def test_earlier_single_process_layout_still_reads(env, uninterrupted, tmp_path):
    """A workdir of the earlier layout (results/process00000-of-00001/shard-K.json, job file with
    process_count 1) loads and resumes (shard K = unit K); the multi-process layout is refused."""
    ref_workdir = uninterrupted[0]
    workdir = str(tmp_path / "legacy")
    legacy = os.path.join(workdir, "results", "process00000-of-00001")
    os.makedirs(legacy)
    for u in range(PLAN.num_units - 1):  # the last unit missing: a resume computes it
        shutil.copy(PLAN.path(ref_workdir, u), os.path.join(legacy, f"shard-{u:06d}.json"))
    job = output.read_json(os.path.join(ref_workdir, output.JOB_FILE))
    job.update(process_count=1, output_name="legacy")
    output.write_json_atomic(os.path.join(workdir, output.JOB_FILE), job)
    assert PLAN.todo(workdir) == [PLAN.num_units - 1]
    summary = capfilt.run(_config(env, output_name="legacy", output_format="webdataset"), workdir)
    assert summary["images_computed_this_run"] == PLAN.size(PLAN.num_units - 1)
    _same_results(output.load_results(workdir, N_WEB, PER_UNIT), uninterrupted[2])
    os.makedirs(os.path.join(workdir, "results", "process00001-of-00002"))
    with pytest.raises(ValueError, match="earlier multi-process layout"):
        capfilt.run(_config(env, output_name="legacy", output_format="webdataset"), workdir)


def test_bad_output_format_is_rejected(env):
    with pytest.raises(capfilt.CapFiltConfigError, match="output_format"):
        capfilt.run(_config(env, output_format="parquet"), str(env[0] / "bad_format"))
    with pytest.raises(capfilt.CapFiltConfigError, match="int32|past"):
        wds.check_keys(2**30, 3)
