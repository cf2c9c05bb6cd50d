"""Image-text retrieval evaluation.

Recall@K for text->image (IR) and image->text (TR, an image counts as found when any of its
reference texts is in the top K), from a score matrix [num_images, num_texts].
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from blip_jax.models.blip import Blip


def recall_at_k(scores_i2t: np.ndarray, text_to_image: np.ndarray,
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """TR@K / IR@K in percent, and their mean. scores_i2t [N_img, N_txt];
    text_to_image [N_txt] gives each text's image index."""
    scores = np.asarray(scores_i2t, np.float64)
    text_to_image = np.asarray(text_to_image)
    n_img, n_txt = scores.shape
    # IR: rank of the right image for each text (0 = best).
    right = scores[text_to_image, np.arange(n_txt)]
    ir_rank = np.sum(scores > right[None, :], axis=0)
    # TR: best rank over an image's texts.
    order = np.argsort(-scores, axis=1, kind="stable")
    is_pos = text_to_image[order] == np.arange(n_img)[:, None]
    tr_rank = np.argmax(is_pos, axis=1)
    out = {}
    for k in ks:
        out[f"tr_r{k}"] = 100.0 * float(np.mean(tr_rank < k))
        out[f"ir_r{k}"] = 100.0 * float(np.mean(ir_rank < k))
    out["r_mean"] = float(np.mean([out[f"{d}_r{k}"] for d in ("tr", "ir") for k in ks]))
    return out


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
                         batch_size: int = 64) -> dict[str, float]:
    """Retrieval by ITC cosine similarity alone (the fast check used during training)."""
    img, txt = itc_features(model, params, images, text_ids, text_mask, batch_size)
    return recall_at_k(img @ txt.T, text_to_image)
