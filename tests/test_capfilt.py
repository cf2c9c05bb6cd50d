"""CapFilt job: filter scores are the filter's ITM probability, 8 devices give what 1 device
gives, a SIGKILLed run resumes to the uninterrupted result, and the outputs (TFDS dataset,
release JSONs, summary) hold exactly the kept pairs.

Models are micro random BLIPs (tests/train_utils.MICRO). A random filter's match probability is
nearly the same for every pair (0.519 +- 0.0005 at init std 0.02), so the filter is initialised
with std 0.2 (probabilities 0.5-0.95) and the threshold is set to the median web-text
probability, computed directly: about half of the texts are kept."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import blip_jax.capfilt as capfilt
from blip_jax import checkpoint, tokenizer as tok
from blip_jax.capfilt import output
from blip_jax.data import prepare
from blip_jax.data.pipeline import make_train_loader, scan_records
from blip_jax.models import init_params
from blip_jax.models.blip import Blip
from train_utils import MICRO, fake_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_WEB = 30
SETTINGS = dict(num_captions=2, max_length=10, min_length=5, max_tokens=24, records_per_shard=4,
                per_device_batch=2, synthetic_num_images=N_WEB, seed=3)
FILTER = MICRO.replace(text=dataclasses.replace(MICRO.text, init_std=0.2),
                       vision=dataclasses.replace(MICRO.vision, init_std=0.2))


def _web_batch(data_dir):
    return next(scan_records(data_dir, prepare.synthetic_dataset_name(num_images=N_WEB, seed=0),
                             "train_web", batch_size=N_WEB, image_size=32, max_tokens=24))


def itm_probability(params, images, ids, mask, rows):
    """softmax(Blip.itm_logits)[:, 1] of the filter: images [I, 32, 32, 3], ids/mask [T, L]
    ([ENC] first), rows [T] = which image each text is paired with."""
    def f(m: Blip):
        logits = m.itm_logits(ids, mask, m.image_features(images)[rows])
        return jax.nn.softmax(logits, -1)[:, 1]
    return np.asarray(jax.jit(lambda p: Blip(FILTER).apply({"params": p}, method=f))(params))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(root, data_dir, threshold) with both checkpoints under root."""
    root = tmp_path_factory.mktemp("capfilt")
    data_dir = str(root / "data")
    prepare.ensure_synthetic(data_dir, num_images=N_WEB, seed=0)
    checkpoint.save_model(str(root / "captioner"), init_params(MICRO, jax.random.key(1)), MICRO)
    fil = init_params(FILTER, jax.random.key(2))
    checkpoint.save_model(str(root / "filter"), fil, FILTER)
    batch = _web_batch(data_dir)
    ids = batch["text_ids"].copy()
    ids[:, 0] = tok.ENC_ID
    web = np.sort(itm_probability(fil, batch["image"], ids, batch["text_mask"], np.arange(N_WEB)))
    return root, data_dir, float(web[N_WEB // 2 - 1] + web[N_WEB // 2]) / 2


def _config(env, **changes):
    root, data_dir, threshold = env
    c = capfilt.default_config()
    c.data_dir, c.threshold = data_dir, threshold
    c.captioner_checkpoint, c.filter_checkpoint = str(root / "captioner"), str(root / "filter")
    for k, v in {**SETTINGS, **changes}.items():
        c[k] = v
    return c


def _results(workdir):
    return output.load_results(workdir, N_WEB, SETTINGS["records_per_shard"])


def _cli(workdir, config):
    keys = ("data_dir", "captioner_checkpoint", "filter_checkpoint", "output_name", "threshold",
            "per_device_batch", *SETTINGS)
    return [sys.executable, "-m", "blip_jax.capfilt", f"--config={ROOT}/configs/capfilt.py",
            f"--workdir={workdir}", *[f"--config.{k}={config[k]!r}" if isinstance(config[k], float)
                                      else f"--config.{k}={config[k]}" for k in keys]]


@pytest.fixture(scope="module")
def killed(env):
    """A CLI run on 1 device (per-device batch 1), SIGKILLed by a watcher thread once half of its
    result shards are on disk; it runs while the reference run computes.
    Returns (workdir, config, {"done": shards on disk at the kill, "log": its output}, watcher)."""
    workdir = str(env[0] / "killed")
    config = _config(env, output_name="resumed", per_device_batch=1)
    log = open(env[0] / "killed.log", "w")  # a file, not a pipe: a full pipe would stall the job
    proc = subprocess.Popen(_cli(workdir, config), stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
                                     XLA_FLAGS=fake_devices(1)))
    plan = output.UnitPlan(N_WEB, SETTINGS["records_per_shard"])
    seen = {}

    def watch():
        deadline = time.time() + 300
        while (len(plan.done(workdir)) < plan.num_units // 2 and proc.poll() is None
               and time.time() < deadline):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
        seen["done"] = plan.done(workdir)
        seen["log"] = (env[0] / "killed.log").read_text()

    watcher = threading.Thread(target=watch)
    watcher.start()
    yield workdir, config, seen, watcher
    watcher.join()


@pytest.fixture(scope="module")
def reference(env, killed):
    """The uninterrupted run on all 8 devices: (workdir, summary, results)."""
    workdir = str(env[0] / "run8")
    summary = capfilt.run(_config(env, output_name="ref"), workdir)
    return workdir, summary, _results(workdir)


def _same_results(a, b, atol=1e-6):
    """Identical captions, labels and kept flags; scores within atol."""
    assert [r["index"] for r in a] == [r["index"] for r in b]
    for x, y in zip(a, b):
        assert {k: x[k] for k in ("image_id", "image_path", "noise", "valid")} == \
               {k: y[k] for k in ("image_id", "image_path", "noise", "valid")}
        texts = [x["web"]] + x["synthetic"], [y["web"]] + y["synthetic"]
        assert [t["caption"] for t in texts[0]] == [t["caption"] for t in texts[1]]
        assert [t["kept"] for t in texts[0]] == [t["kept"] for t in texts[1]]
        np.testing.assert_allclose([t["score"] for t in texts[0]], [t["score"] for t in texts[1]],
                                   atol=atol, rtol=0)


def test_scores_are_the_filters_itm_probability(env, reference):
    """Every stored score equals softmax(Blip.itm_logits)[:, 1] on the same image and the
    cleaned text with [ENC] first, computed here without the job (atol 1e-5, float32)."""
    _, summary, results = reference
    c = _config(env)
    _, fil_params = checkpoint.load_model(c.filter_checkpoint)
    batch = _web_batch(c.data_dir)
    texts = [r["web"]["caption"] for r in results]
    assert texts == [str(t) for t in batch["caption"]]
    synth = [s["caption"] for r in results for s in r["synthetic"]]
    assert all(s and not s.startswith("a picture of") for s in synth)
    tokenizer = tok.BlipTokenizer()
    ids, mask = tokenizer.encode(texts + [tok.pre_caption(s) for s in synth], 24, bos_id=tok.ENC_ID)
    rows = np.concatenate([np.arange(N_WEB), np.repeat(np.arange(N_WEB), 2)])
    expected = itm_probability(fil_params, batch["image"], ids, mask, rows)
    stored = np.array([r["web"]["score"] for r in results]
                      + [s["score"] for r in results for s in r["synthetic"]])
    np.testing.assert_allclose(stored, expected, atol=1e-5, rtol=0)
    kept = np.array([r["web"]["kept"] for r in results] + [s["kept"] for r in results for s in r["synthetic"]])
    assert (kept == (stored >= c.threshold)).all()
    assert 0 < kept.sum() < len(kept)  # the threshold splits the pairs: the test means something
    assert summary["images_seen"] == N_WEB and summary["pairs_kept"] == kept.sum()


def _killed_shards(killed):
    workdir, _, seen, watcher = killed
    watcher.join()
    plan = output.UnitPlan(N_WEB, SETTINGS["records_per_shard"])
    assert seen["done"], f"no shard written before the kill: {seen['log'][-2000:]}"
    assert len(seen["done"]) < plan.num_units, "the job finished before the kill: nothing resumed"
    return seen["done"]


def test_one_device_gives_the_eight_device_result(reference, killed):
    """The shards the 1-device run (per-device batch 1) wrote before it was killed (half the
    records or more) hold what the 8-device run (per-device batch 2) computed for those records:
    same captions and kept flags, scores within atol 1e-6."""
    plan = output.UnitPlan(N_WEB, SETTINGS["records_per_shard"])
    one = [r for k in sorted(_killed_shards(killed))
           for r in output.read_json(plan.path(killed[0], k))["records"]]
    assert len(one) >= N_WEB // 2
    _same_results(one, [reference[2][r["index"]] for r in one])


def test_sigkill_then_restart_completes_exactly_once(reference, killed):
    """Resumed (in-process, 8 devices) after the SIGKILL, the job ends with exactly one result per
    record (load_results checks), identical to the uninterrupted run, and skips finished shards."""
    done = _killed_shards(killed)
    workdir, config = killed[0], killed[1]
    config.per_device_batch = SETTINGS["per_device_batch"]  # not a result setting: may change
    summary = capfilt.run(config, workdir)
    _same_results(_results(workdir), reference[2])
    assert summary["images_computed_this_run"] <= N_WEB - SETTINGS["records_per_shard"] * len(done)
    for key in ("images_seen", "web_kept", "synthetic_kept", "filter"):
        assert summary[key] == reference[1][key]


def test_outputs_hold_exactly_the_kept_pairs(env, reference):
    workdir, summary, results = reference
    data_dir = env[1]
    pairs = output.kept_pairs(results)
    ds = tfds.data_source(summary["dataset"], split="train", data_dir=data_dir)
    got = [(int(r["image_id"]), r["captions"][0].decode(), r["source"].decode(), float(r["score"]))
           for r in ds]
    assert got == [(results[i]["image_id"], text, src, pytest.approx(score, abs=1e-7))
                   for i, text, src, score in pairs]
    source_name = prepare.synthetic_dataset_name(num_images=N_WEB, seed=0)
    source = tfds.data_source(source_name, split="train_web", data_dir=data_dir)
    assert all(ds[k]["image"] == source[pairs[k][0]]["image"] for k in range(len(ds)))
    # Readable for pre-training, also mixed with the clean split.
    loader = make_train_loader(data_dir, [(summary["dataset"], "train"), (source_name, "train_clean")],
                               global_batch_size=4, image_size=32, max_tokens=24)
    assert next(iter(loader))["image"].shape == (4, 32, 32, 3)
    with open(os.path.join(workdir, output.WEB_JSON)) as f:
        web = json.load(f)
    with open(os.path.join(workdir, output.SYNTHETIC_JSON)) as f:
        synthetic = json.load(f)
    assert web == [{"image": results[i]["image_path"], "caption": t} for i, t, s, _ in pairs if s == "web"]
    assert synthetic == [{"image": results[i]["image_path"], "caption": t}
                         for i, t, s, _ in pairs if s == "synthetic"]
    # Precision/recall at removing noisy web texts, from the ground-truth labels.
    removed = [r for r in results if not r["web"]["kept"]]
    noisy = [r for r in results if r["noise"] > 0]
    hits = sum(r["noise"] > 0 for r in removed)
    assert summary["filter"]["precision"] == pytest.approx(hits / len(removed))
    assert summary["filter"]["recall"] == pytest.approx(hits / len(noisy))
    assert summary["web_kept"] == len(results) - len(removed)
    with open(os.path.join(workdir, output.SUMMARY_FILE)) as f:
        assert json.load(f)["pairs_kept"] == len(pairs)


def test_bad_settings_are_rejected(env, reference):
    c = _config(env)
    c.top_q = 0.9
    with pytest.raises(capfilt.CapFiltConfigError, match="top_q"):
        capfilt.run(c, str(env[0] / "bad"))
    with pytest.raises(ValueError, match="threshold"):  # resuming with other settings
        capfilt.run(_config(env, output_name="ref", threshold=0.99), reference[0])


def test_beam_decoding_writes_the_beam_search_caption(env):
    """decoding="beam" stores for each image the caption decoding.beam_search gives on that
    image (same prefix, lengths and repetition penalty), one per image, scored like any other."""
    from blip_jax import decoding

    workdir = str(env[0] / "beam")
    summary = capfilt.run(_config(env, output_name="beam", decoding="beam", num_captions=1), workdir)
    results = _results(workdir)
    assert summary["synthetic_texts"] == N_WEB and all(len(r["synthetic"]) == 1 for r in results)
    c = _config(env)
    _, cap_params = checkpoint.load_model(c.captioner_checkpoint)
    model = Blip(MICRO)
    images = _web_batch(c.data_dir)["image"]
    tokenizer = tok.BlipTokenizer()
    prefix = decoding.prompt_ids(tokenizer, c.prompt)
    context = model.apply({"params": cap_params}, images, method=Blip.image_features)
    tokens = decoding.beam_search(model, cap_params, context, prefix, num_beams=c.num_beams,
                                  max_length=c.max_length, min_length=c.min_length,
                                  repetition_penalty=c.repetition_penalty)
    expected = [tok.pre_caption(t, c.max_words) for t in
                decoding.strip_and_decode(tokenizer, np.asarray(tokens), len(prefix))]
    assert [r["synthetic"][0]["caption"] for r in results] == expected
    for bad, match in ((dict(decoding="greedy"), "decoding"),
                       (dict(decoding="beam", num_captions=2), "num_captions must be 1")):
        with pytest.raises(capfilt.CapFiltConfigError, match=match):
            capfilt.run(_config(env, **bad), str(env[0] / "bad_beam"))
