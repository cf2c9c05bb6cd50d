"""Image-text retrieval evaluation.

`evaluate_retrieval`: the paper's protocol (ITC shortlist, ITM re-rank of the top k_test), sharded
over a device mesh and over processes. `zero_shot_itc_recall`: the fast ITC-only check used during
training. Recall@K: text->image counts the text's own image, image->text counts the best of the
image's reference texts.

The re-rank is where the time goes: at 384 px an image is 577 tokens, and projecting them to the
cross-attention keys/values (2 x 577 x 768^2 multiply-adds per layer) costs several times the
text side of a pair. The original recomputes them for every (image, text) pair. Here the pairs of
both directions are grouped by image: each image's distinct shortlisted texts (its own top k, plus
every text whose top k holds it; a pair in both lists is scored once) are cut into groups of
`texts_per_group`, and one group is one row of the encoder's image batch, so its keys/values are
computed once for the group's texts (models/bert.py `_grouped_attention`). The scores are the
same up to float rounding; texts_per_group=1 is the original's per-pair cost.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from blip_jax import parallel
from blip_jax import tokenizer as tok
from blip_jax.image import normalize
from blip_jax.models.blip import Blip


@functools.partial(jax.jit, static_argnums=0)
def _image_feats(model: Blip, params, images):
    return model.apply({"params": params}, images,
                       method=lambda m, x: m.image_embed(m.image_features(x)))


@functools.partial(jax.jit, static_argnums=0)
def _text_feats(model: Blip, params, ids, mask):
    return model.apply({"params": params}, ids, mask,
                       method=lambda m, i, k: m.text_embed(m.text_features(i, k)))


def _batched(fn, arrays: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    """Applies fn over fixed-size batches (the last one padded: one compiled program)."""
    n = len(arrays[0])
    out = []
    for start in range(0, n, batch_size):
        chunk = [a[start:start + batch_size] for a in arrays]
        pad = batch_size - len(chunk[0])
        if pad:
            chunk = [np.concatenate([c, np.repeat(c[-1:], pad, 0)]) for c in chunk]
        out.append(np.asarray(fn(*[jnp.asarray(c) for c in chunk]))[: batch_size - pad])
    return np.concatenate(out)


def itc_features(model: Blip, params, images: np.ndarray, text_ids: np.ndarray,
                 text_mask: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised ITC features: images [N, E], texts [T, E] ([CLS]-first ids)."""
    img = _batched(lambda x: _image_feats(model, params, x), [images], batch_size)
    txt = _batched(lambda i, k: _text_feats(model, params, i, k), [text_ids, text_mask], batch_size)
    return img, txt


def zero_shot_itc_recall(model: Blip, params, images: np.ndarray, text_ids: np.ndarray,
                         text_mask: np.ndarray, text_to_image: np.ndarray,
                         image_to_texts: Sequence[Sequence[int]],
                         batch_size: int = 64) -> dict[str, float]:
    """Retrieval by ITC cosine similarity alone (the fast check used during training), with
    the same metrics and key names as `evaluate_retrieval`."""
    img, txt = itc_features(model, params, images, text_ids, text_mask, batch_size)
    sims = img @ txt.T
    return retrieval_metrics(sims, sims.T, text_to_image, image_to_texts)


# -- the paper's protocol: ITC shortlist, ITM re-rank ----------------------------------------------
#
# BLIP evaluates retrieval in two stages (salesforce/BLIP train_retrieval.py `evaluation`): cosine
# similarities of the ITC features for every pair, then for each query its top `k_test` candidates
# are re-scored by itm_head(...)[:, 1] + that cosine similarity; every other entry is -100.
# The re-ranking (N_img * k + N_txt * k ITM forwards) dominates, so it runs as one jitted program
# over fixed-size chunks of (image, text) pairs whose batch dimension is sharded over the mesh.
# Each process takes a disjoint slice of the queries; results are all-gathered at the end.

FILL = -100.0  # score of the pairs outside a query's top k (as the original)
_TOPK_ROWS = 1024  # query rows per similarity/top-k call (bounds the [rows, N] similarity block)


def retrieval_ranks(scores_i2t: np.ndarray, scores_t2i: np.ndarray, text_to_image: np.ndarray,
                    image_to_texts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks: (of each image query's best own text [N_img], of each text query's image
    [N_txt]).

    scores_i2t [N_img, N_txt], scores_t2i [N_txt, N_img]; text_to_image [N_txt] (a text's image
    index); image_to_texts: the text indices of each image. Text->image: the rank of the text's own
    image. Image->text: the best rank among the image's texts. A rank counts every wrong candidate
    scored >= the right one, so ties never favour the model (constant scores recall nothing).
    """
    s_i2t = np.asarray(scores_i2t, np.float64)
    s_t2i = np.asarray(scores_t2i, np.float64)
    text_to_image = np.asarray(text_to_image)
    n_img, n_txt = s_i2t.shape
    if s_t2i.shape != (n_txt, n_img) or len(text_to_image) != n_txt or len(image_to_texts) != n_img:
        raise ValueError(f"shapes disagree: scores_i2t {s_i2t.shape}, scores_t2i {s_t2i.shape}, "
                         f"{len(text_to_image)} text_to_image entries, {len(image_to_texts)} "
                         f"image_to_texts entries; expected [I, T], [T, I], T and I")
    # Text -> image: wrong images scoring >= the right one.
    right = s_t2i[np.arange(n_txt), text_to_image]
    wrong = np.ones_like(s_t2i, bool)
    wrong[np.arange(n_txt), text_to_image] = False
    txt_rank = np.sum((s_t2i >= right[:, None]) & wrong, axis=1)
    # Image -> text: other images' texts scoring >= the image's best text.
    own = text_to_image[None, :] == np.arange(n_img)[:, None]
    for i, texts in enumerate(image_to_texts):
        if not len(texts) or not np.all(text_to_image[np.asarray(texts)] == i):
            raise ValueError(f"image {i}: image_to_texts lists {list(texts)}, which disagrees with "
                             f"text_to_image (or is empty); build both from the same annotations")
    best = np.where(own, s_i2t, -np.inf).max(axis=1)
    img_rank = np.sum((s_i2t >= best[:, None]) & ~own, axis=1)
    return img_rank, txt_rank


def retrieval_metrics(scores_i2t: np.ndarray, scores_t2i: np.ndarray, text_to_image: np.ndarray,
                      image_to_texts: Sequence[Sequence[int]]) -> dict[str, float]:
    """Recall@1/5/10 in percent with the original's key names, from `retrieval_ranks` (same
    arguments)."""
    img_rank, txt_rank = retrieval_ranks(scores_i2t, scores_t2i, text_to_image, image_to_texts)
    out: dict[str, float] = {}
    for k in (1, 5, 10):
        out[f"txt_r{k}"] = 100.0 * float(np.mean(img_rank < k))  # text retrieval: image queries
    for k in (1, 5, 10):
        out[f"img_r{k}"] = 100.0 * float(np.mean(txt_rank < k))  # image retrieval: text queries
    out["txt_r_mean"] = (out["txt_r1"] + out["txt_r5"] + out["txt_r10"]) / 3
    out["img_r_mean"] = (out["img_r1"] + out["img_r5"] + out["img_r10"]) / 3
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


def combine_scores(num_candidates: int, topk_idx: np.ndarray, topk_sim: np.ndarray,
                   itm_match: np.ndarray) -> np.ndarray:
    """Dense [Q, num_candidates] float32 scores: itm_match + topk_sim at each query's top-k
    candidates (topk_idx/topk_sim/itm_match all [Q, k]), FILL (-100) everywhere else."""
    q = topk_idx.shape[0]
    out = np.full((q, num_candidates), FILL, np.float32)
    np.put_along_axis(out, np.asarray(topk_idx), (np.asarray(itm_match, np.float32)
                                                   + np.asarray(topk_sim, np.float32)), axis=1)
    return out


def _process_slice(n: int, process: int, count: int) -> tuple[int, int]:
    """Contiguous, balanced share of n queries for one process."""
    base, extra = divmod(n, count)
    start = process * base + min(process, extra)
    return start, start + base + (process < extra)


def _padded(a: np.ndarray, rows: int) -> np.ndarray:
    """a with its first dimension padded to `rows` by repeating its last row (or zeros if empty)."""
    if len(a) >= rows:
        return a[:rows]
    n = rows - len(a)
    fill = np.repeat(a[-1:], n, 0) if len(a) else np.zeros((n, *a.shape[1:]), a.dtype)
    return np.concatenate([a, fill])


def _put_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The same host array on every process -> a global array with `sharding`."""
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate_params(params, mesh: Mesh):
    """params as global arrays replicated over the mesh (what the evaluation programs take)."""
    sharding = parallel.replicated(mesh)

    def one(x):
        if isinstance(x, jax.Array) and (jax.process_count() == 1 or not x.is_fully_addressable):
            return jax.device_put(x, sharding)
        return _put_global(np.asarray(x), sharding)

    return jax.tree_util.tree_map(one, params)


def _visual_tokens(model: Blip, params, visuals: jax.Array, num_frames: int) -> jax.Array:
    """Images [B, H, W, 3] (num_frames 0) or videos [B, F, H, W, 3] -> tokens [B, N, Dv]."""
    method = Blip.video_features if num_frames else Blip.image_features
    return model.apply({"params": params}, visuals, method=method)


def _visual_embed(model: Blip, params, tokens: jax.Array, num_frames: int) -> jax.Array:
    if num_frames:
        return model.apply({"params": params}, tokens, num_frames, method=Blip.video_embed)
    return model.apply({"params": params}, tokens, method=Blip.image_embed)


@functools.lru_cache(maxsize=None)
def _programs(model: Blip, mesh: Mesh, num_frames: int = 0):
    """The jitted, mesh-sharded programs of the evaluation (compiled once per model, mesh and
    frame count; num_frames 0: images, else videos of that many frames)."""
    rep = parallel.replicated(mesh)
    rows = lambda ndim: parallel.batch_sharding(mesh, ndim)  # noqa: E731

    def image_step(params, buf, images, start):
        tokens = _visual_tokens(model, params, images, num_frames)
        embeds = _visual_embed(model, params, tokens, num_frames)
        buf = jax.lax.dynamic_update_slice_in_dim(buf, tokens.astype(buf.dtype), start, axis=0)
        return buf, embeds

    def text_step(params, ids, mask):
        return model.apply({"params": params}, ids, mask,
                           method=lambda m, i, k: m.text_embed(m.text_features(i, k)))

    def itm_step(params, image_tokens, image_index, ids, mask):
        # [u] groups -> tokens [u, N, Dv]; the u * G text rows attend to their group's row (the
        # encoder's grouped cross-attention). Gathering rows of the replicated tokens by a
        # batch-sharded index keeps the groups sharded.
        tokens = jax.lax.with_sharding_constraint(image_tokens[image_index], rows(3))
        logits = model.apply({"params": params}, ids, mask, tokens, method=Blip.itm_logits)
        return logits[:, 1]

    return {
        # buf (all image tokens, replicated) is updated in place: no second copy of it.
        "image": jax.jit(image_step, in_shardings=(rep, rep, rows(5 if num_frames else 4), rep),
                         out_shardings=(rep, rep), donate_argnums=1),
        "text": jax.jit(text_step, in_shardings=(rep, rows(2), rows(2)), out_shardings=rep),
        "itm": jax.jit(itm_step, in_shardings=(rep, rep, rows(1), rows(2), rows(2)),
                       out_shardings=rows(1)),
    }


@functools.partial(jax.jit, static_argnums=2)
def _topk(queries, keys, k):
    sims = jnp.matmul(queries, keys.T, precision=jax.lax.Precision.HIGHEST)
    return jax.lax.top_k(sims, k)


def _shortlist(queries: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine similarities of each query row: (sims [Q, k] float32, indices [Q, k] int32)."""
    sims, idx = [], []
    keys = jnp.asarray(keys)
    for start in range(0, len(queries), _TOPK_ROWS):
        block = queries[start:start + _TOPK_ROWS]
        s, i = _topk(jnp.asarray(_padded(block, _TOPK_ROWS)), keys, k)
        sims.append(np.asarray(s)[:len(block)])
        idx.append(np.asarray(i)[:len(block)])
    if not sims:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
    return np.concatenate(sims), np.concatenate(idx).astype(np.int32)


class Features(NamedTuple):
    image_tokens: jax.Array  # [>= N_img, tokens, width], replicated over the mesh (padded rows)
    image_embeds: np.ndarray  # [N_img, E] float32, L2-normalised
    text_embeds: np.ndarray  # [N_txt, E] float32, L2-normalised


def visual_text_features(model: Blip, params, images: np.ndarray, text_ids: np.ndarray,
                         text_mask: np.ndarray, batch_size: int, mesh: Mesh) -> Features:
    """ITC features of every image and text, and every image's tokens kept on the mesh
    (params: `replicate_params(params, mesh)`).
    images [N, H, W, 3], or videos [N, F, H, W, 3] (tokens: the frames' concatenated, ITC
    feature: Blip.video_embed)."""
    num_frames = images.shape[1] if images.ndim == 5 else 0
    progs = _programs(model, mesh, num_frames)
    chunk = batch_size * parallel.batch_shards(mesh)
    n_img = len(images)
    steps = -(-n_img // chunk)
    shape = jax.eval_shape(lambda p, x: _visual_tokens(model, p, x, num_frames),
                           params, jax.ShapeDtypeStruct((1, *images.shape[1:]), jnp.float32))
    buf = jax.jit(lambda: jnp.zeros((steps * chunk, *shape.shape[1:]), shape.dtype),
                  out_shardings=parallel.replicated(mesh))()
    img_sharding = parallel.batch_sharding(mesh, images.ndim)
    embeds = []
    for s in range(steps):
        block = _padded(images[s * chunk:(s + 1) * chunk], chunk)
        if block.dtype == np.uint8:  # normalise per chunk: a uint8 set costs 4x less host memory
            block = normalize(block)
        buf, e = progs["image"](params, buf, _put_global(block.astype(np.float32), img_sharding),
                                np.int32(s * chunk))
        embeds.append(e)
    image_embeds = np.concatenate([np.asarray(e) for e in embeds])[:n_img]
    text_embeds = []
    txt_sharding = parallel.batch_sharding(mesh, 2)
    for start in range(0, len(text_ids), chunk):
        ids = _put_global(_padded(text_ids[start:start + chunk], chunk), txt_sharding)
        mask = _put_global(_padded(text_mask[start:start + chunk], chunk), txt_sharding)
        text_embeds.append(progs["text"](params, ids, mask))
    text_embeds = np.concatenate([np.asarray(e) for e in text_embeds])[:len(text_ids)]
    return Features(buf, image_embeds.astype(np.float32), text_embeds.astype(np.float32))


class PairGroups(NamedTuple):
    """The distinct (visual, text) pairs to re-rank, grouped by image or video.

    visual [U] int32: each group's image/video; texts [U, G] int32: its texts (padding slots
    repeat the group's first text); valid [U, G] bool; pair_keys [P] int64: visual * num_texts +
    text of every distinct pair, sorted; pair_slot [P] int64: where pair p sits in the flattened
    [U * G] groups.
    """

    visual: np.ndarray
    texts: np.ndarray
    valid: np.ndarray
    pair_keys: np.ndarray
    pair_slot: np.ndarray


def group_pairs(v2t_idx: np.ndarray, t2v_idx: np.ndarray, num_visuals: int, num_texts: int,
                texts_per_group: int) -> PairGroups:
    """Groups the union of both shortlists by image (or video), texts_per_group per group (fewer
    when no image has that many). v2t_idx [V, k_t]: each image's top texts; t2v_idx [T, k_v]:
    each text's top images."""
    if texts_per_group < 1:
        raise ValueError(f"texts_per_group must be >= 1, got {texts_per_group}")
    visuals = np.concatenate([np.repeat(np.arange(num_visuals), v2t_idx.shape[1]),
                              t2v_idx.ravel()])
    texts = np.concatenate([v2t_idx.ravel(), np.repeat(np.arange(num_texts), t2v_idx.shape[1])])
    keys = np.unique(visuals.astype(np.int64) * num_texts + texts)
    pv, pt = keys // num_texts, keys % num_texts
    counts = np.bincount(pv, minlength=num_visuals)
    g = min(texts_per_group, int(counts.max()))  # no group wider than the most any image needs
    groups = -(-counts // g)
    first_group = np.cumsum(groups) - groups
    first_pair = np.cumsum(counts) - counts
    pos = np.arange(len(keys)) - first_pair[pv]
    unit, slot = first_group[pv] + pos // g, pos % g
    num_units = int(groups.sum())
    out_texts = np.zeros((num_units, g), np.int32)
    valid = np.zeros((num_units, g), bool)
    out_texts[unit, slot] = pt
    valid[unit, slot] = True
    out_texts = np.where(valid, out_texts, out_texts[:, :1])
    return PairGroups(np.repeat(np.arange(num_visuals, dtype=np.int32), groups), out_texts, valid,
                      keys, unit.astype(np.int64) * g + slot)


def _lookup(groups: PairGroups, match: np.ndarray, visuals: np.ndarray, texts: np.ndarray,
            num_texts: int) -> np.ndarray:
    """ITM match logits of the pairs (visuals[i], texts[i]) (all among the grouped pairs)."""
    keys = visuals.astype(np.int64) * num_texts + texts
    return match[groups.pair_slot[np.searchsorted(groups.pair_keys, keys)]]


def _gather_rows(local: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Concatenates every process's rows (process order); `sizes` are the per-process counts."""
    if jax.process_count() == 1:
        return local
    padded = _padded(local, max(sizes))
    every = np.asarray(multihost_utils.process_allgather(padded))  # [processes, max, ...]
    return np.concatenate([every[p, :n] for p, n in enumerate(sizes)])


def text_width(lengths: np.ndarray, full: int, multiple: int) -> int:
    """Token columns a re-rank step needs: its longest text rounded up to `multiple` (a few
    program shapes), at most `full`; multiple 0 keeps `full`. Columns past every text's end are
    padding that attention masks out, so cutting them changes no score beyond float rounding."""
    if multiple <= 0 or len(lengths) == 0:
        return full
    return min(full, -(-max(int(lengths.max()), 1) // multiple) * multiple)


def _group_match(model: Blip, params, visual_tokens: jax.Array, groups: PairGroups,
                 enc_ids: np.ndarray, text_mask: np.ndarray, groups_per_shard: int,
                 mesh: Mesh, text_multiple: int = 8) -> np.ndarray:
    """ITM match logits of every group slot, float32 [U * G], identical on every process (each
    runs a contiguous share of the groups in fixed-size steps, the longest share deciding their
    number; the shares are gathered). Each step's texts are cut to `text_width` of the longest
    text any process has in that step, so all processes run the same program."""
    itm = _programs(model, mesh)["itm"]
    g = groups.texts.shape[1]
    count, pid = jax.process_count(), jax.process_index()
    local = groups_per_shard * parallel.batch_shards(mesh) // count
    shares = [_process_slice(len(groups.visual), p, count) for p in range(count)]
    lo, hi = shares[pid]
    steps = -(-max(b - a for a, b in shares) // local)
    spec = P(parallel.BATCH_AXES)
    # Tokens up to each text's last unmasked one (masks are [1..1 0..0] as tokenized).
    lengths = np.where(text_mask.any(1), text_mask.shape[1] - np.argmax(text_mask[:, ::-1] != 0, 1), 0)
    results = []
    for s in range(steps):  # dispatched asynchronously; read back after the loop
        sl = slice(lo + s * local, min(hi, lo + (s + 1) * local))
        visual = _padded(groups.visual[sl], local)
        texts = _padded(groups.texts[sl], local).ravel()
        step_texts = np.concatenate([groups.texts[a + s * local:min(b, a + (s + 1) * local)].ravel()
                                     for a, b in shares])
        width = text_width(lengths[step_texts], text_mask.shape[1], text_multiple)
        batch = parallel.global_batch({"visual": visual, "ids": enc_ids[texts, :width],
                                       "mask": text_mask[texts, :width]}, mesh)
        results.append(itm(params, visual_tokens, batch["visual"], batch["ids"], batch["mask"]))
    out = [np.asarray(multihost_utils.global_array_to_host_local_array(r, mesh, spec))
           for r in results]
    mine = (np.concatenate(out) if out else np.zeros(0, np.float32))[:(hi - lo) * g]
    every = _gather_rows(mine.reshape(hi - lo, g), [b - a for a, b in shares])
    return every.reshape(-1).astype(np.float32)


class _Clock:
    """Records the seconds since the previous mark under each stage name (if asked to)."""

    def __init__(self, out: Optional[dict[str, float]]):
        self.out, self.last = out, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        if self.out is not None:
            self.out[stage] = now - self.last
        self.last = now


def retrieval_scores(model: Blip, params, images: np.ndarray, text_ids: np.ndarray,
                     text_mask: np.ndarray, *, k_test: int, batch_size: int = 64,
                     texts_per_group: int = 16, mesh: Optional[Mesh] = None,
                     timings: Optional[dict[str, float]] = None,
                     features: Optional[Features] = None,
                     text_multiple: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """BLIP's two-stage retrieval scores.

    images: float32 normalised [N_img, H, W, 3] (uint8 pixels are accepted and normalised chunk by
    chunk), or videos [N_img, F, H, W, 3] (`evaluation/video_retrieval.py`); text_ids/text_mask:
    int [N_txt, L], [CLS]-first as tokenized (the ITM pass swaps in [ENC]). k_test: candidates
    re-ranked per query (COCO 256, Flickr 128), capped at the number of candidates. batch_size:
    images or texts per data shard of the mesh per feature step, and ITM (image, text) rows per
    data shard per re-rank step. texts_per_group: texts sharing one image's cross-attention
    keys/values in the re-rank (1: recomputed for every pair, as the original; see the module
    doc). mesh: default one `data` axis over all devices; every process must pass the same inputs.

    Returns (scores_i2t [N_img, N_txt], scores_t2i [N_txt, N_img]) float32 NumPy, identical on every
    process: ITM match logit + cosine similarity for each query's top-k candidates, -100 elsewhere.
    Device memory: every device holds all image tokens (N_img x tokens x vision width).
    timings: if given, receives wall seconds of each stage: itc_features, similarity (top-k),
    itm_rerank, gather. features: `visual_text_features` of these inputs on this mesh, computed
    earlier (a benchmark comparing re-rank settings computes them once); None computes them.
    text_multiple: each re-rank step's texts are cut past their longest one, rounded up to this
    many tokens (`text_width`; 0: every step at the full padded length, as the original).
    """
    clock = _Clock(timings)
    if k_test < 1:
        raise ValueError(f"k_test must be >= 1, got {k_test}")
    mesh = mesh if mesh is not None else parallel.make_mesh({"data": -1})
    if batch_size * parallel.batch_shards(mesh) % jax.process_count():
        raise ValueError(f"batch_size {batch_size} x {parallel.batch_shards(mesh)} data shards is "
                         f"not divisible by the {jax.process_count()} processes; change batch_size")
    images = np.asarray(images)
    text_ids, text_mask = np.asarray(text_ids, np.int32), np.asarray(text_mask, np.int32)
    n_img, n_txt = len(images), len(text_ids)
    if n_img == 0 or n_txt == 0 or len(text_mask) != n_txt:
        raise ValueError(f"need images and texts: got {n_img} images, {n_txt} text_ids and "
                         f"{len(text_mask)} text_mask rows")
    params = replicate_params(params, mesh)
    feats = features or visual_text_features(model, params, images, text_ids, text_mask,
                                             batch_size, mesh)
    clock("itc_features")
    k_txt, k_img = min(k_test, n_txt), min(k_test, n_img)
    # Every process shortlists every query (a matmul and top-k, cheap next to the re-rank), so
    # each knows all the pairs and the groups can be split evenly over processes.
    sim_i2t, idx_i2t = _shortlist(feats.image_embeds, feats.text_embeds, k_txt)
    sim_t2i, idx_t2i = _shortlist(feats.text_embeds, feats.image_embeds, k_img)
    clock("similarity")

    enc_ids = text_ids.copy()
    enc_ids[:, 0] = tok.ENC_ID  # the image-grounded encoder starts with [ENC]
    groups = group_pairs(idx_i2t, idx_t2i, n_img, n_txt, texts_per_group)
    group_size = groups.texts.shape[1]
    per_shard = max(1, batch_size // group_size)
    if per_shard * parallel.batch_shards(mesh) % jax.process_count():
        raise ValueError(f"{per_shard} groups x {parallel.batch_shards(mesh)} data shards is not "
                         f"divisible by the {jax.process_count()} processes; change batch_size or "
                         f"texts_per_group")
    match = _group_match(model, params, feats.image_tokens, groups, enc_ids, text_mask,
                         per_shard, mesh, text_multiple)
    clock("itm_rerank")
    i2t_match = _lookup(groups, match, np.repeat(np.arange(n_img), k_txt), idx_i2t.ravel(), n_txt)
    t2i_match = _lookup(groups, match, idx_t2i.ravel(), np.repeat(np.arange(n_txt), k_img), n_txt)
    scores_i2t = combine_scores(n_txt, idx_i2t, sim_i2t, i2t_match.reshape(n_img, k_txt))
    scores_t2i = combine_scores(n_img, idx_t2i, sim_t2i, t2i_match.reshape(n_txt, k_img))
    clock("gather")
    return scores_i2t, scores_t2i


def evaluate_retrieval(model: Blip, params, images: np.ndarray, text_ids: np.ndarray,
                       text_mask: np.ndarray, text_to_image: np.ndarray,
                       image_to_texts: Sequence[Sequence[int]], *, k_test: int,
                       batch_size: int = 64, texts_per_group: int = 16,
                       mesh: Optional[Mesh] = None) -> dict[str, float]:
    """The paper's retrieval evaluation: `retrieval_scores` then `retrieval_metrics`
    (txt_r1/5/10, img_r1/5/10, txt_r_mean, img_r_mean, r_mean in percent)."""
    scores_i2t, scores_t2i = retrieval_scores(model, params, images, text_ids, text_mask,
                                              k_test=k_test, batch_size=batch_size,
                                              texts_per_group=texts_per_group, mesh=mesh)
    return retrieval_metrics(scores_i2t, scores_t2i, text_to_image, image_to_texts)
