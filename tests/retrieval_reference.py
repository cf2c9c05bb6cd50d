"""BLIP's two-stage retrieval scores written out query by query (the original's loops), for
tests: used by the image and the video retrieval tests."""

import numpy as np

from blip_jax.models.config import BlipConfig, TextConfig, VisionConfig

# A retrieval model (no decoder). Large random weights (random_params) give distinct features
# per input, so no near-ties in the similarity top-k that could order differently in NumPy and
# XLA. 32 px frames of 16 px patches: 5 tokens per image.
CONFIG = BlipConfig(
    vision=VisionConfig(image_size=32, patch_size=16, width=32, depth=1, num_heads=2, mlp_dim=64),
    text=TextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                    max_position_embeddings=32),
    embed_dim=16, text_decoder=False)


def random_params(seed: int = 0) -> dict:
    """Random weights N(0, 0.3^2) for every parameter of CONFIG, from the shapes alone: the same
    kind of random model as init_params, without compiling the model's init (~15 s on CI)."""
    import flax.linen as nn
    import jax

    from blip_jax.models.blip import abstract_params

    rng = np.random.default_rng(seed)
    shapes = nn.meta.unbox(abstract_params(CONFIG))
    return jax.tree_util.tree_map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


def two_stage_scores(sims: np.ndarray, match: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """sims, match [N_vis, N_txt]: ITC cosine and ITM match logit of every pair. Returns
    (vis->text [N_vis, N_txt], text->vis [N_txt, N_vis]): match + cosine at each query's top k by
    cosine, -100 elsewhere."""
    n_vis, n_txt = sims.shape
    v2t = np.full((n_vis, n_txt), -100.0)
    for v in range(n_vis):
        top = np.argsort(-sims[v])[:k]
        v2t[v, top] = match[v, top] + sims[v, top]
    t2v = np.full((n_txt, n_vis), -100.0)
    for t in range(n_txt):
        top = np.argsort(-sims[:, t])[:k]
        t2v[t, top] = match[top, t] + sims[top, t]
    return v2t, t2v


def all_pairs_match(model, params, tokens: np.ndarray, ids: np.ndarray,
                    mask: np.ndarray) -> np.ndarray:
    """ITM match logit [N_vis, N_txt] of every (visual tokens, text) pair, from one batched
    forward of the image-grounded encoder ([CLS]-first ids; [ENC] swapped in here)."""
    import jax

    from blip_jax import tokenizer as tok
    from blip_jax.models import Blip

    n_vis, n_txt = len(tokens), len(ids)
    enc = ids.copy()
    enc[:, 0] = tok.ENC_ID
    vv, tt = np.meshgrid(np.arange(n_vis), np.arange(n_txt), indexing="ij")
    itm = np.asarray(jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=Blip.itm_logits))(
        params, enc[tt.ravel()], mask[tt.ravel()], tokens[vv.ravel()]))
    return itm[:, 1].reshape(n_vis, n_txt)
