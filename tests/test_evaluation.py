"""Evaluation library: BLIP's retrieval protocol against a plain NumPy implementation (one device,
a sharded 8-device mesh, 2 processes), the recall metrics on hand-made cases, and the COCO
caption metrics on tiny hand-made sets."""

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest

from blip_jax import parallel
from blip_jax.image import normalize
from blip_jax.evaluation import captioning, retrieval
from blip_jax.models import Blip
from tests.retrieval_reference import CONFIG, all_pairs_match, random_params, two_stage_scores
from tests.train_utils import run_two_processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_IMG, CAPS, LEN, K = 12, 3, 8, 10  # 36 texts; k=10 keeps the -100 ties out of R@1/5/10
TOL = dict(rtol=1e-4, atol=1e-4)  # float32, same maths, other batching (logits are O(1)-O(10))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (N_IMG, 32, 32, 3), dtype=np.uint8)  # normalised inside
    n_txt = N_IMG * CAPS
    ids = rng.integers(1000, 3000, (n_txt, LEN)).astype(np.int32)
    ids[:, 0] = 101
    mask = np.ones_like(ids)
    mask[::4, LEN // 2:] = 0  # some padded captions
    ids[mask == 0] = 0
    text_to_image = np.repeat(np.arange(N_IMG), CAPS).astype(np.int32)
    image_to_texts = [list(range(i * CAPS, (i + 1) * CAPS)) for i in range(N_IMG)]
    return images, ids, mask, text_to_image, image_to_texts


@pytest.fixture(scope="module")
def setup():
    return Blip(CONFIG), random_params(), _data()


def _numpy_protocol(model, params, images, ids, mask, k):
    """The paper's protocol written out (uint8 images, normalised here): cosine of ITC features,
    per-query top k, ITM match logit (of every pair, from one batched forward) + cosine at the
    top k, -100 elsewhere."""
    def encode(p, x, i, msk):  # one jitted program (eager op-by-op dispatch is slow on CI)
        m = model.bind({"params": p})
        tokens = m.image_features(x)
        return tokens, m.image_embed(tokens), m.text_embed(m.text_features(i, msk))

    tokens, img, txt = jax.tree_util.tree_map(
        np.asarray, jax.jit(encode)(params, normalize(images), ids, mask))
    img, txt = img.astype(np.float64), txt.astype(np.float64)
    sims = img @ txt.T
    match = all_pairs_match(model, params, tokens, ids, mask)
    return two_stage_scores(sims, match, k)


def _original_metrics(s_i2t, s_t2i, txt2img, img2txt):
    """Recall as the original computes it: position of the answer in a descending sort."""
    tr = [min(np.where(np.argsort(row)[::-1] == t)[0][0] for t in img2txt[i])
          for i, row in enumerate(s_i2t)]
    ir = [np.where(np.argsort(row)[::-1] == txt2img[t])[0][0] for t, row in enumerate(s_t2i)]
    out = {f"txt_r{k}": 100 * np.mean(np.array(tr) < k) for k in (1, 5, 10)}
    out.update({f"img_r{k}": 100 * np.mean(np.array(ir) < k) for k in (1, 5, 10)})
    return out


@pytest.mark.parametrize("texts_per_group", [1, 16])
def test_scores_match_numpy_protocol(setup, texts_per_group):
    """Pair by pair (1, the original's cost) and with each image's keys/values shared by its
    shortlisted texts (16: groups as wide as the most texts any image has)."""
    model, params, (images, ids, mask, t2i_gt, i2t_gt) = setup
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])  # both calls reuse one compilation
    got_i2t, got_t2i = retrieval.retrieval_scores(model, params, images, ids, mask, k_test=K,
                                                  batch_size=5, texts_per_group=texts_per_group,
                                                  mesh=mesh)
    want_i2t, want_t2i = _numpy_protocol(model, params, images, ids, mask, K)
    assert got_i2t.dtype == np.float32 and got_i2t.shape == (N_IMG, N_IMG * CAPS)
    np.testing.assert_allclose(got_i2t, want_i2t, **TOL)
    np.testing.assert_allclose(got_t2i, want_t2i, **TOL)
    assert np.sum(got_i2t > -100, axis=1).tolist() == [K] * N_IMG
    metrics = retrieval.evaluate_retrieval(model, params, images, ids, mask, t2i_gt, i2t_gt,
                                           k_test=K, batch_size=5,
                                           texts_per_group=texts_per_group, mesh=mesh)
    want = _original_metrics(want_i2t, want_t2i, t2i_gt, i2t_gt)
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key


def test_rerank_cuts_text_padding(setup, monkeypatch):
    """Token columns past every text of a re-rank step are cut (rounded up to text_multiple):
    the same scores as at the full padded length and as the NumPy protocol on unpadded texts."""
    model, params, (images, ids, mask, _, _) = setup
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    wide_ids, wide_mask = (np.pad(a, ((0, 0), (0, 6))) for a in (ids, mask))  # 14 columns, 8 used
    widths = []
    cut = retrieval.text_width
    monkeypatch.setattr(retrieval, "text_width", lambda *a: widths.append(cut(*a)) or widths[-1])
    want = _numpy_protocol(model, params, images, ids, mask, K)
    for multiple, expected in ((0, {14}), (8, {8}), (3, {9})):
        widths.clear()
        got = retrieval.retrieval_scores(model, params, images, wide_ids, wide_mask, k_test=K,
                                         batch_size=16, texts_per_group=16, mesh=mesh,
                                         text_multiple=multiple)
        assert set(widths) == expected, (multiple, widths)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, **TOL)
    assert cut(np.array([3, 5]), 35, 8) == 8 and cut(np.array([33]), 35, 8) == 35
    assert cut(np.array([], int), 35, 8) == 35 and cut(np.array([3]), 35, 0) == 35


def test_sharded_equals_single_device(setup):
    """8 devices (data 2 x fsdp 2 x tensor 2), float32 images, padded last chunks == 1 device
    with uint8 images; k_test larger than the image count is capped (t2i re-ranks all 12)."""
    model, params, (images, ids, mask, _, _) = setup
    one = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    eight = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    a = retrieval.retrieval_scores(model, params, images, ids, mask, k_test=16, batch_size=5, mesh=one)
    b = retrieval.retrieval_scores(model, params, normalize(images), ids, mask, k_test=16,
                                   batch_size=3, mesh=eight)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, **TOL)
    assert np.all(a[1] > -100)  # t2i: k capped at 12 = every image


def test_combine_scores_random():
    rng = np.random.default_rng(0)
    q, n, k = 6, 20, 4
    idx = np.stack([rng.permutation(n)[:k] for _ in range(q)])
    sim, itm = rng.normal(size=(q, k)), rng.normal(size=(q, k))
    out = retrieval.combine_scores(n, idx, sim, itm)
    want = np.full((q, n), -100.0)
    for r in range(q):
        for j in range(k):
            want[r, idx[r, j]] = itm[r, j] + sim[r, j]
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)  # float32 output


def test_metrics_hand_made():
    # 3 images; texts 0,1 -> image 0, texts 2,3 -> image 1, text 4 -> image 2.
    t2i_gt = np.array([0, 0, 1, 1, 2])
    i2t_gt = [[0, 1], [2, 3], [4]]
    s_i2t = np.array([[0.1, 0.9, 0.8, 0.0, 0.2],    # best own text (1) first: rank 0
                      [0.9, 0.8, 0.1, 0.7, 0.0],    # own texts 2,3; best is 3 after texts 0,1: rank 2
                      [0.5, 0.4, 0.3, 0.2, 0.1]])   # own text 4 last: rank 4
    s_t2i = np.array([[0.9, 0.1, 0.0],   # right image first
                      [0.1, 0.9, 0.0],   # right image second
                      [0.0, 0.9, 0.1],   # first
                      [0.5, 0.2, 0.9],   # third
                      [0.1, 0.2, 0.3]])  # first
    m = retrieval.retrieval_metrics(s_i2t, s_t2i, t2i_gt, i2t_gt)
    assert m["txt_r1"] == pytest.approx(100 / 3) and m["txt_r5"] == pytest.approx(100.0)
    assert m["img_r1"] == pytest.approx(60.0) and m["img_r5"] == pytest.approx(100.0)
    assert m["txt_r_mean"] == pytest.approx((100 / 3 + 200) / 3)
    assert m["img_r_mean"] == pytest.approx((60 + 200) / 3)
    assert m["r_mean"] == pytest.approx((m["txt_r_mean"] + m["img_r_mean"]) / 2)
    # Ties never count for the model: constant scores find nothing at rank 0.
    flat = retrieval.retrieval_metrics(np.zeros((3, 5)), np.zeros((5, 3)), t2i_gt, i2t_gt)
    assert flat["txt_r1"] == 0 and flat["img_r1"] == 0
    with pytest.raises(ValueError, match="image_to_texts"):
        retrieval.retrieval_metrics(s_i2t, s_t2i, t2i_gt, [[0], [2, 3], [4, 1]])


def test_metrics_match_original_on_random_scores():
    rng = np.random.default_rng(3)
    n_img, caps = 30, 5
    t2i_gt = np.repeat(np.arange(n_img), caps)
    i2t_gt = [list(range(i * caps, (i + 1) * caps)) for i in range(n_img)]
    s_i2t = rng.normal(size=(n_img, n_img * caps)) + 2.0 * (t2i_gt[None, :] == np.arange(n_img)[:, None])
    s_t2i = rng.normal(size=(n_img * caps, n_img)) + 2.0 * (t2i_gt[:, None] == np.arange(n_img)[None, :])
    got = retrieval.retrieval_metrics(s_i2t, s_t2i, t2i_gt, i2t_gt)
    for key, value in _original_metrics(s_i2t, s_t2i, t2i_gt, i2t_gt).items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


# -- several processes --------------------------------------------------------------------------

def _worker(out_path: str) -> None:
    """One process of a 2-process run (see test_two_processes_match_one)."""
    from blip_jax import distributed
    distributed.initialize()
    model, params = Blip(CONFIG), random_params()
    images, ids, mask, _, _ = _data()
    i2t, t2i = retrieval.retrieval_scores(model, params, images, ids, mask, k_test=K, batch_size=3)
    np.savez(f"{out_path}.{jax.process_index()}.npz", i2t=i2t, t2i=t2i)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, setup):
    """2 processes x 4 fake devices (loopback): each re-ranks half of the pair groups and both
    return the full matrices, equal to one process. ~25 s."""
    model, params, (images, ids, mask, _, _) = setup
    want = retrieval.retrieval_scores(model, params, images, ids, mask, k_test=K, batch_size=3)
    out = str(tmp_path / "scores")
    run_two_processes([sys.executable, os.path.abspath(__file__), out],
                      port=20000 + (os.getpid() + 7) % 20000, timeout=300)
    for i in range(2):
        got = np.load(f"{out}.{i}.npz")
        np.testing.assert_allclose(got["i2t"], want[0], **TOL)
        np.testing.assert_allclose(got["t2i"], want[1], **TOL)


# -- captioning -----------------------------------------------------------------------------------

REFS = {
    1: ["A dog runs across the grass.", "a brown dog running in a green field"],
    2: ["Two people ride bikes down a street", "a couple of cyclists on a city road"],
    3: ["a plate of food with broccoli and rice", "A dinner plate with rice, broccoli."],
    4: ["a man holds an umbrella in the rain", "person with a red umbrella on a rainy day"],
}
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java not on PATH")


@needs_java
def test_caption_metrics_identical_beats_mismatched():
    same = captioning.caption_metrics({k: v[0] for k, v in REFS.items()}, REFS)
    assert same["tokenizer"] == "ptb"
    assert same["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert same["METEOR"] == pytest.approx(1.0, abs=1e-6)
    assert same["ROUGE_L"] == pytest.approx(1.0, abs=1e-6)
    assert same["CIDEr"] > 2.0
    # Each image gets another image's caption.
    swapped = captioning.caption_metrics({k: REFS[k % 4 + 1][0] for k in REFS}, REFS)
    for key in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert swapped[key] < same[key] - 0.3, key


@needs_java
def test_one_meteor_process_serves_every_evaluation():
    """caption_metrics keeps METEOR's java process (its start, loading the paraphrase tables, took
    20-35 s on a 2-core AMD EPYC) for the next evaluation: what it scored before does not change a
    score (exactly), a process that died is replaced, close_meteor stops it."""
    same = {k: v[0] for k, v in REFS.items()}
    swapped = {k: REFS[k % 4 + 1][0] for k in REFS}
    captioning.caption_metrics(same, REFS)
    process = captioning._meteor_scorer.meteor_p
    used = captioning.caption_metrics(swapped, REFS)["METEOR"]
    assert captioning._meteor_scorer.meteor_p is process  # no second start
    process.kill()
    process.wait()
    fresh = captioning.caption_metrics(swapped, REFS)["METEOR"]  # the first set a new process scores
    replacement = captioning._meteor_scorer.meteor_p
    assert replacement is not process and fresh == used
    captioning.close_meteor()
    assert captioning._meteor_scorer is None and replacement.poll() is not None


@needs_java
def test_python_tokenizer_matches_ptb():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    sents = ["A man's T-shirt, 3.5 dogs... don't (they) \"quote\" o'clock; it's 5:30 - ok?",
             "Dogs' toys & cats-- can't won't I'm we'd", "A DOG!  On a   sofa?"]
    ptb = PTBTokenizer().tokenize({0: [{"caption": s} for s in sents]})[0]
    assert [captioning.python_tokenize(s) for s in sents] == ptb


def test_python_path_without_meteor():
    preds = {k: v[1] for k, v in REFS.items()}
    m = captioning.caption_metrics(preds, REFS, tokenizer="python")
    assert m["tokenizer"] == "python" and "METEOR" not in m
    assert m["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="same image ids"):
        captioning.caption_metrics({1: "a dog"}, REFS, tokenizer="python")


def test_write_results_and_baseline(tmp_path):
    path = str(tmp_path / "captions.json")
    captioning.write_results(path, {np.int64(7): "a dog", 9: "a cat"})
    with open(path) as f:
        assert json.load(f) == [{"image_id": 7, "caption": "a dog"}, {"image_id": 9, "caption": "a cat"}]
    refs = {1: ["a cat on a mat", "A cat  on a mat"], 2: ["a dog on a mat", "a cat on a mat"],
            3: ["two birds"]}
    assert captioning.caption_agnostic_baseline(refs) == {k: "a cat on a mat" for k in refs}
    # All distinct: the median length (5 words) and then the most common words decide.
    refs = {1: ["a dog on a mat"], 2: ["one red car by the road"], 3: ["a cat on a sofa"],
            4: ["birds"]}
    assert captioning.caption_agnostic_baseline(refs)[4] == "a cat on a sofa"


if __name__ == "__main__":
    _worker(sys.argv[1])
