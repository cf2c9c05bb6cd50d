"""Caption decoding (greedy, beam search, nucleus sampling) with a key/value cache, under jit
with static shapes.

The image cross-attention keys/values are computed once per image (prompt pass) and reused at
every step; the self-attention cache grows one slot per token. Output token arrays always have
`max_length` columns: the prompt (starting with [DEC]), the generated tokens, [SEP] where a
sequence ended, then padding (0). Lengths count the prompt, as transformers' generate does.

Scores follow transformers' logits processors in their order: repetition penalty, the
[SEP] ban below `min_length`, then (sampling only) temperature, top-k and top-p. Greedy and
sampling process the raw logits; beam search processes log-probabilities (as transformers does).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from blip_jax import tokenizer as tok
from blip_jax.models.blip import Blip

# transformers' beam search marks impossible/finished candidates by adding this (not -inf, so
# that sums stay ordered); reproducing it keeps beam finalisation bit-compatible.
_BEAM_PENALTY = -1.0e9

METHODS = ("beam", "greedy", "nucleus")
# Beam search's length normalisation (see beam_search): "original" = the transformers 4.x rule
# the original BLIP release decoded with, "generated" = the transformers 5 rule.
LENGTH_NORMS = ("original", "generated")


def prompt_ids(tokenizer: tok.BlipTokenizer, prompt: str = "") -> np.ndarray:
    """[DEC] followed by the prompt's tokens (no [SEP]): the decoder's prefix."""
    if not prompt.strip():
        return np.array([tok.DEC_ID], np.int32)
    ids, mask = tokenizer.encode([prompt], max_length=64, bos_id=tok.DEC_ID, add_eos=False)
    return ids[0, : int(mask[0].sum())]


def init_cache(model: Blip, params, context: jax.Array, max_length: int):
    """Zero decoding cache for a batch of `context` ([B, N, C] image tokens), `max_length` slots."""
    batch = context.shape[0]
    shapes = jax.eval_shape(
        lambda p, c: model.apply({"params": p}, jnp.zeros((batch, max_length), jnp.int32),
                                 jnp.arange(max_length)[None], c, method=Blip.decode_logits,
                                 mutable=["cache"])[1]["cache"], params, context)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _run(model: Blip, params, cache, ids, positions, context):
    logits, state = model.apply({"params": params, "cache": cache}, ids, positions, context,
                                method=Blip.decode_logits, mutable=["cache"])
    return logits[:, -1], state["cache"]


def _prompt_pass(model: Blip, params, context, prefix, max_length: int):
    """Runs [DEC]+prompt for every image: (tokens [B, max_length], logits [B, V], cache)."""
    batch, plen = context.shape[0], prefix.shape[0]
    if plen >= max_length:
        raise ValueError(f"the prefix ([DEC] + prompt) is {plen} tokens but max_length is "
                         f"{max_length}: raise max_length or shorten the prompt")
    cache = init_cache(model, params, context, max_length)
    ids = jnp.broadcast_to(prefix[None], (batch, plen)).astype(jnp.int32)
    logits, cache = _run(model, params, cache, ids, jnp.arange(plen)[None], context)
    tokens = jnp.zeros((batch, max_length), jnp.int32).at[:, :plen].set(ids)
    return tokens, logits, cache


# -- score processors ---------------------------------------------------------------------------

def _repetition_penalty(scores: jax.Array, tokens: jax.Array, length, penalty: float) -> jax.Array:
    """transformers' RepetitionPenaltyLogitsProcessor: every token among tokens[:, :length]
    (prompt and [DEC] included) has its score divided by `penalty` if positive, multiplied if
    negative. scores [N, V] float32, tokens [N, L] int32."""
    if penalty == 1.0:
        return scores
    n, vocab = scores.shape
    # Slots at or after `length` point past the vocabulary and are dropped by the scatter.
    ids = jnp.where(jnp.arange(tokens.shape[1]) < length, tokens, vocab)
    seen = jnp.zeros((n, vocab), bool).at[jnp.arange(n)[:, None], ids].set(True, mode="drop")
    return jnp.where(seen, jnp.where(scores < 0, scores * penalty, scores / penalty), scores)


def _ban_end_before(scores: jax.Array, length, min_length: int) -> jax.Array:
    """[SEP] is impossible while the sequence (prefix included) is shorter than min_length."""
    return jnp.where((length < min_length) & (jnp.arange(scores.shape[-1]) == tok.SEP_ID),
                     -jnp.inf, scores)


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
    """Nucleus filter: logits [..., V] with -inf outside the smallest set of most likely tokens
    whose probability mass reaches `top_p` (always at least the most likely token); tokens tied
    with the least likely kept one are kept too. top_p >= 1 returns the logits unchanged.

    The cut-off probability is found by bisection rather than by sorting the vocabulary (a
    [B, 30524] sort costs ~10 ms per row on a CPU and dominated sampling): the kept set is
    {p >= t} for the largest t whose set still holds top_p of the mass. Bisecting over the
    bit patterns of the float32 probabilities (monotone for non-negative floats) lands on t
    exactly, one of the probabilities, in at most 31 masked sums over the vocabulary.
    """
    if top_p >= 1.0:
        return logits
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)
    # Invariant: mass(p >= lo) >= top_p (lo = 0.0 holds everything); mass(p >= hi) < top_p.
    lo = jnp.zeros(bits.shape[:-1] + (1,), jnp.int32)
    hi = jnp.max(bits, axis=-1, keepdims=True) + 1

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        mass = jnp.sum(jnp.where(bits >= mid, probs, 0.0), axis=-1, keepdims=True)
        enough = mass >= top_p
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 31, halve, (lo, hi))
    return jnp.where(bits >= lo, logits, -jnp.inf)


def top_k_filter(logits: jax.Array, top_k: int) -> jax.Array:
    """logits [..., V] with -inf below the k-th largest (ties kept); top_k 0 = no filter.

    The k-th largest is found by bisection, as in top_p_filter: jax.lax.top_k sorts the whole
    vocabulary on a CPU and made CapFilt's sampling 10x slower. The float32 logits map to int32
    keys in the same order (negative floats' magnitude bits flipped), and the largest key t
    with at least k keys >= t is the k-th largest, found exactly in 32 masked counts."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    bits = jax.lax.bitcast_convert_type(logits.astype(jnp.float32), jnp.int32)
    keys = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
    # Invariant: count(keys >= lo) >= k; count(keys >= hi) < k.
    lo = jnp.min(keys, axis=-1, keepdims=True)
    hi = jnp.max(keys, axis=-1, keepdims=True) + 1  # a max key of 2^31 - 1 is a NaN: not a logit

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        enough = jnp.sum(keys >= mid, axis=-1, keepdims=True) >= top_k
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    return jnp.where(keys >= lo, logits, -jnp.inf)


# -- greedy and sampling ------------------------------------------------------------------------

def _decode_one_per_row(model: Blip, params, context, prefix, pick: Callable, *,
                        max_length: int, min_length: int, repetition_penalty: float):
    """Shared loop of greedy and sampling: pick(scores [B, V] float32, length) -> [B] int32.
    Stops as soon as every row has produced [SEP]."""
    tokens, logits, cache = _prompt_pass(model, params, context, prefix, max_length)
    batch, plen = tokens.shape[0], prefix.shape[0]

    def choose(tokens, length, done, logits):
        scores = _repetition_penalty(logits, tokens, length, repetition_penalty)
        scores = _ban_end_before(scores, length, min_length)
        nxt = jnp.where(done, tok.PAD_ID, pick(scores, length).astype(jnp.int32))
        tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, length))
        return tokens, length + 1, done | (nxt == tok.SEP_ID), nxt

    def cond(state):
        _, length, done, _, _ = state
        return (length < max_length) & ~jnp.all(done)

    def body(state):
        tokens, length, done, cache, last = state
        # The step's forward runs only when another token is needed (no wasted last pass).
        logits, cache = _run(model, params, cache, last[:, None], jnp.full((1, 1), length - 1),
                             None)
        tokens, length, done, last = choose(tokens, length, done, logits)
        return tokens, length, done, cache, last

    tokens, length, done, last = choose(tokens, jnp.int32(plen), jnp.zeros((batch,), bool), logits)
    tokens, *_ = jax.lax.while_loop(cond, body, (tokens, length, done, cache, last))
    return tokens


@functools.partial(jax.jit, static_argnames=("model", "max_length", "min_length",
                                             "repetition_penalty"))
def greedy_decode(model: Blip, params, context: jax.Array, prefix: jax.Array, *,
                  max_length: int = 20, min_length: int = 0,
                  repetition_penalty: float = 1.0) -> jax.Array:
    """Greedy captions. context [B, N, C] image tokens; prefix [P] int32 ([DEC] + prompt).

    Returns int32 tokens [B, max_length]; `min_length` counts the prefix, as HF does.
    """
    pick = lambda scores, length: jnp.argmax(scores, axis=-1)
    return _decode_one_per_row(model, params, context, prefix, pick, max_length=max_length,
                               min_length=min_length, repetition_penalty=repetition_penalty)


@functools.partial(jax.jit, static_argnames=("model", "top_p", "temperature", "max_length",
                                             "min_length", "repetition_penalty", "top_k"))
def nucleus_sample(model: Blip, params, context: jax.Array, prefix: jax.Array, rng: jax.Array, *,
                   top_p: float = 0.9, temperature: float = 1.0, max_length: int = 20,
                   min_length: int = 5, repetition_penalty: float = 1.0,
                   top_k: int = 0) -> jax.Array:
    """Nucleus (top-p) sampled captions, one per row of context [B, N, C]; for N samples per
    image repeat the context rows. `rng` is a PRNG key: the same key gives the same tokens
    (step t draws with fold_in(rng, t)). `top_k` > 0 also keeps only the k most likely tokens
    (transformers' generate defaults to 50, which the original CapFilt inherited: capfilt's
    top_k).
    Returns int32 tokens [B, max_length]. Pure JAX: usable under pmap/vmap."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature <= 0.0:
        raise ValueError(f"temperature must be > 0 (use greedy_decode for argmax), got {temperature}")

    def pick(scores, length):
        scores = scores / temperature if temperature != 1.0 else scores
        scores = top_p_filter(top_k_filter(scores, top_k), top_p)
        return jax.random.categorical(jax.random.fold_in(rng, length), scores, axis=-1)

    return _decode_one_per_row(model, params, context, prefix, pick, max_length=max_length,
                               min_length=min_length, repetition_penalty=repetition_penalty)


# -- beam search --------------------------------------------------------------------------------

def _reorder_cache(cache, rows: jax.Array):
    """Gathers the self-attention cache rows [B*K, ...] of the surviving beams. The image
    cross-attention keys/values ([B, ...], shared by an image's beams; beams never move
    between images) stay as they are."""
    def pick(path, leaf):
        name = getattr(path[-1], "key", "")
        return jnp.take(leaf, rows, axis=0) if name in ("cached_key", "cached_value") else leaf
    return jax.tree_util.tree_map_with_path(pick, cache)


def _is_cross(path) -> bool:
    return getattr(path[-1], "key", "") in ("cross_key", "cross_value")


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [B, M, ...], idx [B, K] -> x[b, idx[b, k], ...]."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _add_hypotheses(finished, finished_scores, is_finished, cand, scores, add):
    """Adds the candidates cand [B, M, L] whose `add` [B, M] is set, scored `scores` [B, M], to
    the K best finished hypotheses (a candidate enters only if it beats the worst of a full
    set; on equal scores the earlier one stays)."""
    k = finished.shape[1]
    scores = scores + (~add).astype(jnp.float32) * _BEAM_PENALTY
    merged = jnp.concatenate([finished_scores, scores], axis=1)
    best = jax.lax.top_k(merged, k)[1]
    return (_gather(jnp.concatenate([finished, cand], axis=1), best), _gather(merged, best),
            _gather(jnp.concatenate([is_finished, add], axis=1), best))


@functools.partial(jax.jit, static_argnames=("model", "num_beams", "max_length", "min_length",
                                             "length_penalty", "repetition_penalty",
                                             "length_norm"))
def beam_search(model: Blip, params, context: jax.Array, prefix: jax.Array, *, num_beams: int = 3,
                max_length: int = 20, min_length: int = 5, length_penalty: float = 1.0,
                repetition_penalty: float = 1.0, length_norm: str = "original") -> jax.Array:
    """Beam search with [SEP] as end token; returns the best finished beam per image, int32
    tokens [B, max_length] (context [B, N, C], prefix [P] = [DEC] + prompt).

    transformers' generate(num_beams=K, early_stopping=False): each step keeps the 2K best
    continuations over all beams (only beam 0 live at the first step); those ending among the
    first K become finished hypotheses (the K best are kept); the K best non-ending ones
    continue. A finished hypothesis scores sum(logprob) / length**length_penalty, where
    `length_norm` says what length counts and when an image is done:

    - "original" (default; transformers 4.15-4.26, what the original BLIP release decoded
      with): length = the whole sequence before [SEP], [DEC] and prompt included. At
      max_length the K running beams (the K best non-[SEP] continuations) become hypotheses
      of length max_length. An image is done once it has K hypotheses and the worst scores
      at least (best candidate's sum) / (current length, before this step's token).
    - "generated" (transformers 5): length = the generated tokens, [SEP] included, prompt
      excluded. At max_length the ending candidates are the first K of the 2K. An image is
      done once its K hypotheses all score at least the best running beam's sum divided by
      its generated length.

    The rule changes which beam wins (and so CIDEr); each gives the same tokens as the
    transformers generate it names (tests/test_decoding.py).
    """
    if length_norm not in LENGTH_NORMS:
        raise ValueError(f"length_norm={length_norm!r}: use one of {', '.join(LENGTH_NORMS)}")
    original = length_norm == "original"
    k, plen = num_beams, prefix.shape[0]
    tokens, logits, cache = _prompt_pass(model, params, context, prefix, max_length)
    batch, vocab = tokens.shape[0], logits.shape[-1]
    # One copy of the prompt's self-attention state per beam; the image keys/values stay one
    # per image, shared by its beams (the text model groups the beams' queries over them).
    cache = jax.tree_util.tree_map_with_path(
        lambda path, x: x if (x.ndim == 0 or _is_cross(path)) else jnp.repeat(x, k, axis=0), cache)
    logits = jnp.repeat(logits, k, axis=0)
    running = jnp.repeat(tokens[:, None], k, axis=1)  # [B, K, L]
    # Only beam 0 is live at first, so the first step does not pick the same token K times.
    running_scores = jnp.where(jnp.arange(k) == 0, 0.0, _BEAM_PENALTY) * jnp.ones((batch, 1))
    first_k = jnp.arange(2 * k) < k
    # What a hypothesis ending at this step (its last token at position `length`) is divided
    # by: transformers 4 stores it without its [SEP] and counts the prefix; transformers 5
    # counts the generated tokens, the last included.
    if original:
        norm = lambda length: jnp.float32(length) ** length_penalty
    else:
        norm = lambda length: jnp.float32(length + 1 - plen) ** length_penalty
    positions = jnp.arange(max_length)

    def step(state, logits):
        (length, running, running_scores, finished, finished_scores, is_finished, improvable,
         cache) = state
        logp = jax.nn.log_softmax(logits, axis=-1)
        logp = _repetition_penalty(logp, running.reshape(batch * k, -1), length,
                                   repetition_penalty)
        logp = _ban_end_before(logp, length, min_length)
        total = (logp.reshape(batch, k, vocab) + running_scores[..., None]).reshape(batch, -1)
        # The barriers keep XLA:CPU from fusing away the slices of its top_k decomposition,
        # which leaves a full stable sort of the [B, K*V] scores instead of the TopK call:
        # 30x slower decoding at tiny scale (tests/test_decoding.py, no vocabulary sort). One
        # barrier per output: one on the (values, indices) pair crashes XLA under pmap.
        cand_scores, flat = jax.lax.top_k(total, 2 * k)  # [B, 2K]
        cand_scores = jax.lax.optimization_barrier(cand_scores)
        flat = jax.lax.optimization_barrier(flat)
        origin, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        cand = jnp.where(positions == length, token[..., None], _gather(running, origin))
        last = length + 1 >= max_length
        # "original": only [SEP] ends a candidate here; at max_length the running beams are
        # added below. "generated": reaching max_length ends every candidate.
        ends = token == tok.SEP_ID if original else (token == tok.SEP_ID) | last

        # The K best continuations that do not end keep running.
        live_scores = cand_scores + ends.astype(jnp.float32) * _BEAM_PENALTY
        keep = jax.lax.top_k(live_scores, k)[1]
        running, running_scores = _gather(cand, keep), _gather(live_scores, keep)
        rows = (jnp.arange(batch)[:, None] * k + _gather(origin, keep)).reshape(-1)

        # Ending candidates among the first K join the finished set if they beat its worst.
        finished, finished_scores, is_finished = _add_hypotheses(
            finished, finished_scores, is_finished, cand, cand_scores / norm(length),
            ends & first_k & improvable[:, None])

        if original:
            # Done: K hypotheses, the worst no lower than the best candidate's sum over the
            # current length. Then, at max_length, the running beams of images not done.
            done = jnp.all(is_finished, axis=1) & (
                jnp.min(finished_scores, axis=1) >= cand_scores[:, 0] / norm(length))
            improvable = improvable & ~done
            # These are stored whole: max_length tokens.
            at_max = jnp.broadcast_to(last & improvable[:, None], (batch, k))
            finished, finished_scores, is_finished = _add_hypotheses(
                finished, finished_scores, is_finished, running,
                running_scores / jnp.float32(length + 1) ** length_penalty, at_max)
        else:
            # Can the best running beam (generated length: norm(length)) still beat a
            # finished one?
            best_running = running_scores[:, :1] / norm(length)
            worst = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True),
                              _BEAM_PENALTY)
            improvable = improvable & jnp.any(best_running > worst, axis=1)
        return (length + 1, running, running_scores, finished, finished_scores, is_finished,
                improvable, _reorder_cache(cache, rows))

    def cond(state):
        length, improvable = state[0], state[6]
        return (length < max_length) & jnp.any(improvable)

    def body(state):
        length, running, cache = state[0], state[1], state[7]
        last = jax.lax.dynamic_index_in_dim(running, length - 1, axis=2, keepdims=False)
        logits, cache = _run(model, params, cache, last.reshape(-1, 1),
                             jnp.full((1, 1), length - 1), None)
        return step(state[:7] + (cache,), logits)

    state = (jnp.int32(plen), running, running_scores, running,
             jnp.full((batch, k), _BEAM_PENALTY, jnp.float32), jnp.zeros((batch, k), bool),
             jnp.ones((batch,), bool), cache)
    state = jax.lax.while_loop(cond, body, step(state, logits))
    return state[3][:, 0]


# -- dispatch and output ------------------------------------------------------------------------

def generate(model: Blip, params, context: jax.Array, prefix: jax.Array, *,
             method: str = "beam", rng: Optional[jax.Array] = None, **options) -> jax.Array:
    """Captions by `method` ('beam', 'greedy' or 'nucleus'); `options` go to beam_search,
    greedy_decode or nucleus_sample. Returns int32 tokens [B, max_length]."""
    if method == "beam":
        return beam_search(model, params, context, prefix, **options)
    if method == "greedy":
        return greedy_decode(model, params, context, prefix, **options)
    if method == "nucleus":
        if rng is None:
            raise ValueError("nucleus sampling needs rng=jax.random.key(seed)")
        return nucleus_sample(model, params, context, prefix, rng, **options)
    raise ValueError(f"unknown decoding method {method!r}: use one of {', '.join(METHODS)}")


def strip_and_decode(tokenizer: tok.BlipTokenizer, tokens: np.ndarray,
                     prefix_length: int) -> list[str]:
    """Caption strings without the [DEC]+prompt prefix, cut at [SEP]."""
    return tokenizer.batch_decode(np.asarray(tokens)[:, prefix_length:])


def caption_tokens_list(tokens: np.ndarray) -> list[list[int]]:
    """Per-row token ids up to and including [SEP] (padding dropped)."""
    out = []
    for row in np.asarray(tokens).tolist():
        end = row.index(tok.SEP_ID) + 1 if tok.SEP_ID in row else len(row)
        out.append([t for t in row[:end]])
    return out


__all__: Sequence[str] = ["LENGTH_NORMS", "METHODS", "beam_search", "caption_tokens_list",
                          "generate", "greedy_decode", "init_cache", "nucleus_sample", "prompt_ids",
                          "strip_and_decode", "top_k_filter", "top_p_filter"]
