"""Zero-shot video retrieval (blip_jax/evaluation/video_retrieval.py): the video ITC feature
against NumPy, the grouped re-rank against the protocol written out pair by pair (the
original's), 1 device against 8, and the metrics on hand-made scores."""

import jax
import numpy as np
import pytest

from blip_jax import parallel
from blip_jax.evaluation import retrieval, video_retrieval
from blip_jax.image import normalize
from blip_jax.models import Blip
from tests.retrieval_reference import CONFIG, all_pairs_match, random_params, two_stage_scores

N_VID, FRAMES, CAPS, LEN, K = 9, 3, 2, 8, 5
# float32, same maths in another order (grouped vs per-pair attention, other batch shapes):
# logits are O(1)-O(10) after sums of <= 64 products, so 1e-4 is ~10^3 float32 epsilons.
TOL = dict(rtol=1e-4, atol=1e-4)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    videos = rng.integers(0, 256, (N_VID, FRAMES, 32, 32, 3), dtype=np.uint8)
    n_txt = N_VID * CAPS
    ids = rng.integers(1000, 3000, (n_txt, LEN)).astype(np.int32)
    ids[:, 0] = 101
    mask = np.ones_like(ids)
    mask[::3, LEN // 2:] = 0
    ids[mask == 0] = 0
    text_to_video = np.repeat(np.arange(N_VID), CAPS).astype(np.int32)
    video_to_texts = [list(range(v * CAPS, (v + 1) * CAPS)) for v in range(N_VID)]
    return videos, ids, mask, text_to_video, video_to_texts


@pytest.fixture(scope="module")
def setup():
    return Blip(CONFIG), random_params(), _data()


def test_video_embed_equals_numpy(setup):
    model, params, (videos, *_) = setup
    frames = normalize(videos)

    def both(p, x):
        m = model.bind({"params": p})
        per_frame = m.image_features(x.reshape(-1, *x.shape[2:]))  # [V*F, N, D]
        tokens = m.video_features(x)
        return per_frame, tokens, m.video_embed(tokens, FRAMES)

    per_frame, tokens, embed = map(np.asarray, jax.jit(both)(params, frames))
    n = per_frame.shape[1]
    # Tokens: frame f of video v is rows f*N..(f+1)*N of the video's concatenated tokens.
    np.testing.assert_array_equal(tokens, per_frame.reshape(N_VID, FRAMES * n, -1))
    proj = params["vision_proj"]
    cls = per_frame.reshape(N_VID, FRAMES, n, -1)[:, :, 0].astype(np.float64)
    mean = (cls @ proj["kernel"] + proj["bias"]).mean(axis=1)
    want = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    # Unit vectors from a 32-term projection: float32 rounding ~32 * 6e-8 relative per entry.
    np.testing.assert_allclose(embed, want, rtol=0, atol=1e-5)


def _pairwise_protocol(model, params, videos, ids, mask, k):
    """The original's loop written out: ITC cosine of the mean frame features, each query's top
    k re-scored by ITM (every pair its own forward over its video's concatenated tokens)."""
    def encode(p, x, i, msk):
        m = model.bind({"params": p})
        tokens = m.video_features(x)
        return tokens, m.video_embed(tokens, FRAMES), m.text_embed(m.text_features(i, msk))

    tokens, vid, txt = map(np.asarray, jax.jit(encode)(params, normalize(videos), ids, mask))
    sims = vid.astype(np.float64) @ txt.astype(np.float64).T
    match = all_pairs_match(model, params, tokens, ids, mask)
    return two_stage_scores(sims, match, k)


@pytest.mark.parametrize("texts_per_group", [1, 4])
def test_scores_match_pairwise_protocol(setup, texts_per_group):
    model, params, (videos, ids, mask, _, _) = setup
    mesh = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    got = video_retrieval.video_retrieval_scores(model, params, videos, ids, mask, k_test=K,
                                                 batch_size=8, texts_per_group=texts_per_group,
                                                 mesh=mesh)
    want = _pairwise_protocol(model, params, videos, ids, mask, K)
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, **TOL)
    assert np.sum(got[0] > -100, axis=1).tolist() == [K] * N_VID


def test_eight_devices_equal_one(setup):
    """data 2 x fsdp 2 x tensor 2, float32 frames, groups of 3 (padded steps) == 1 device,
    uint8 frames, groups of 4; k larger than the video count is capped."""
    model, params, (videos, ids, mask, _, _) = setup
    one = parallel.make_mesh({"data": 1}, jax.devices()[:1])
    eight = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    a = video_retrieval.video_retrieval_scores(model, params, videos, ids, mask, k_test=12,
                                               batch_size=8, texts_per_group=4, mesh=one)
    b = video_retrieval.video_retrieval_scores(model, params, normalize(videos), ids, mask,
                                               k_test=12, batch_size=6, texts_per_group=3,
                                               mesh=eight)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, **TOL)
    assert np.all(a[1] > -100)  # t2v: k capped at 9 = every video


def test_group_pairs_covers_each_pair_once():
    rng = np.random.default_rng(1)
    n_vid, n_txt, k = 7, 11, 4
    v2t = np.stack([rng.permutation(n_txt)[:k] for _ in range(n_vid)])
    t2v = np.stack([rng.permutation(n_vid)[:k] for _ in range(n_txt)])
    groups = retrieval.group_pairs(v2t, t2v, n_vid, n_txt, texts_per_group=3)
    got = sorted((int(v), int(t)) for v, ts, ok in zip(groups.visual, groups.texts, groups.valid)
                 for t, o in zip(ts, ok) if o)
    want = sorted({(v, int(t)) for v in range(n_vid) for t in v2t[v]}
                  | {(int(v), t) for t in range(n_txt) for v in t2v[t]})
    assert got == want  # every pair of either shortlist, once
    assert np.all(np.diff(groups.visual) >= 0) and groups.valid[:, 0].all()
    assert groups.texts.shape[1] == 3
    # Groups are never wider than the most texts a video has (no padded work).
    wide = retrieval.group_pairs(v2t, t2v, n_vid, n_txt, texts_per_group=100)
    assert wide.texts.shape[1] == wide.valid.sum(1).max() and len(wide.visual) == n_vid
    # Each group slot found by the lookup is the pair it names.
    flat_v = np.repeat(groups.visual, groups.texts.shape[1])
    flat_t = groups.texts.ravel()
    keys = flat_v[groups.pair_slot].astype(np.int64) * n_txt + flat_t[groups.pair_slot]
    np.testing.assert_array_equal(keys, groups.pair_keys)


def test_metrics_hand_made():
    # 3 videos, one caption each. Text queries: ranks 1, 2, 3 -> vid_r1 33.3, median rank 2.
    t2v = np.array([[0.9, 0.1, 0.0],
                    [0.8, 0.5, 0.1],
                    [0.7, 0.6, 0.2]])
    v2t = t2v.T.copy()
    m = video_retrieval.video_retrieval_metrics(v2t, t2v, np.arange(3), [[0], [1], [2]])
    assert m["vid_r1"] == pytest.approx(100 / 3) and m["vid_r5"] == 100.0
    assert m["vid_mdR"] == 2.0
    # Video queries on v2t: video 0 ranks text 0 first; video 1: 0.5 vs 0.1, 0.6 -> rank 2;
    # video 2: 0.2 vs 0.0, 0.1 -> first.
    assert m["txt_r1"] == pytest.approx(200 / 3) and m["txt_mdR"] == 1.0
    assert set(m) >= {"txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "vid_r1", "vid_r5", "vid_r10",
                      "vid_r_mean", "vid_mdR", "r_mean"}
