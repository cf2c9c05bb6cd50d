"""A loaded checkpoint with jitted entry points: what the caption and score commands share."""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from blip_jax import checkpoint, decoding, image, tokenizer as tok
from blip_jax.models.blip import Blip
from blip_jax.models.config import BlipConfig

# Computation dtypes of the inference commands (--dtype, CapFilt's config.dtype).
DTYPES = ("float32", "bfloat16")


def check_dtype(dtype: str) -> str:
    """`dtype` if the inference commands accept it; else a ValueError naming the choices."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported for inference: use "
                         f"{' or '.join(DTYPES)}")
    return dtype


def with_dtype(config: BlipConfig, params, dtype: str = "float32") -> tuple[BlipConfig, dict]:
    """(config, params) for inference in `dtype`: the model's computation dtype set to it and the
    floating-point params cast to it once (bfloat16: weights held in bfloat16 on the device,
    half the memory and the weight traffic of every step; Flax would otherwise cast float32
    weights per op). Integer leaves are kept. The model keeps its own float32 islands: attention
    scores and softmax (layers.attention), LayerNorm statistics (Flax), LM/ITM logits and the
    ITC features, and everything decoding does with the logits.

    The one place the inference entry points (Predictor.load, `blip_jax.evaluate`, CapFilt)
    apply their dtype; float32 gives float32 params whatever the checkpoint's config says."""
    check_dtype(dtype)
    target = jnp.dtype(dtype)

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return config.replace(dtype=dtype), jax.tree_util.tree_map(cast, params)


@dataclasses.dataclass
class Predictor:
    config: BlipConfig
    params: dict
    tokenizer: tok.BlipTokenizer

    @classmethod
    def load(cls, directory: str, dtype: str = "float32") -> "Predictor":
        """The checkpoint in `directory`, computing in `dtype` ("float32" or "bfloat16": see
        `with_dtype`)."""
        check_dtype(dtype)  # before reading the checkpoint
        config, params = with_dtype(*checkpoint.load_model(directory), dtype)
        return cls(config, params, tok.BlipTokenizer())

    @functools.cached_property
    def model(self) -> Blip:
        return Blip(self.config)

    def load_images(self, paths: Sequence[str]) -> np.ndarray:
        return np.stack([image.load_image(p, self.config.vision.image_size) for p in paths])

    def image_tokens(self, images: np.ndarray) -> jax.Array:
        return _image_tokens(self.model, self.params, jnp.asarray(images))

    def caption(self, images: np.ndarray, *, prompt: str = "a picture of ", max_length: int = 20,
                min_length: int = 5, batch_size: int = 8, num_beams: int = 3, top_p: float = 0.0,
                seed: int = 0, repetition_penalty: float = 1.0, length_norm: str = "original"
                ) -> tuple[list[str], list[list[int]]]:
        """Captions for normalised images [N, H, W, 3]: (texts, token ids incl. [DEC]).

        Beam search with `num_beams` (1 = greedy) and `length_norm` ("original": the original
        BLIP's transformers 4 rule, "generated": transformers 5's; see decoding.beam_search);
        `top_p` > 0 switches to nucleus sampling seeded by `seed` (each batch of images draws
        with its own key folded from it). Lengths count [DEC] and the prompt, which is
        stripped from the texts."""
        if not self.config.text_decoder:
            raise ValueError("this checkpoint has no text decoder (a retrieval model?): "
                             "it cannot caption; use a captioning or pre-trained checkpoint")
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1 (1 = greedy), got {num_beams}")
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1] (0 = no sampling), got {top_p}")
        if length_norm not in decoding.LENGTH_NORMS:
            raise ValueError(f"length_norm must be one of {', '.join(decoding.LENGTH_NORMS)}, "
                             f"got {length_norm!r}")
        prefix = decoding.prompt_ids(self.tokenizer, prompt)
        if len(prefix) >= max_length:
            raise ValueError(f"prompt {prompt!r} is {len(prefix)} tokens, max_length={max_length}")
        options = dict(max_length=max_length, min_length=min_length,
                       repetition_penalty=repetition_penalty)
        if top_p > 0:
            method, options["top_p"] = "nucleus", top_p
        elif num_beams > 1:
            method = "beam"
            options.update(num_beams=num_beams, length_norm=length_norm)
        else:
            method = "greedy"
        texts, token_lists = [], []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            # Pad the last chunk to the batch size so every call reuses one compiled program.
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
            ctx = self.image_tokens(padded)
            rng = jax.random.fold_in(jax.random.key(seed), start) if method == "nucleus" else None
            toks = np.asarray(decoding.generate(self.model, self.params, ctx, jnp.asarray(prefix),
                                                method=method, rng=rng, **options))[: len(chunk)]
            texts += decoding.strip_and_decode(self.tokenizer, toks, len(prefix))
            token_lists += decoding.caption_tokens_list(toks)
        return texts, token_lists

    def answer(self, images: np.ndarray, questions: Sequence[str], *, method: str = "rank",
               answers: Sequence[str] | None = None, k_test: int = 128, top_k: int = 5,
               batch_size: int = 8, max_question_tokens: int = 35, num_beams: int = 3,
               max_length: int = 10, min_length: int = 1) -> list[dict]:
        """Answers for normalised images [N, H, W, 3] and their questions (a VQA checkpoint).

        method "rank" (the paper's): the best of `answers` after re-scoring the first-token
        top `k_test` by sequence likelihood; each result has "answer", "tokens" ([DEC] first)
        and "top_k" (the `top_k` best re-scored answers with their log-likelihood "score").
        method "generate": beam search (num_beams / max_length / min_length, the original's
        3 / 10 / 1); "answer" and "tokens"."""
        from blip_jax import answering  # VQA only

        if self.config.decoder_context != "question":
            raise ValueError("this checkpoint is not a VQA model (its decoder reads the image, "
                             "not the question): fine-tune one with configs/vqa*.py or convert "
                             "a VQA checkpoint (model_base_vqa*.pth, BlipForQuestionAnswering)")
        if method not in ("rank", "generate"):
            raise ValueError(f"method must be 'rank' or 'generate', got {method!r}")
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        if method == "rank":
            cands = answering.AnswerCandidates.build(answers or [], self.tokenizer)
            cand_ids, cand_mask = jnp.asarray(cands.ids), jnp.asarray(cands.mask)
            top_k = min(top_k, k_test, len(cands.answers))
        cleaned = [tok.pre_question(q) for q in questions]
        q_ids, q_mask = self.tokenizer.encode(cleaned, max_question_tokens)
        out: list[dict] = []
        for start in range(0, len(images), batch_size):
            n = min(batch_size, len(images) - start)
            # Pad to the batch size so every call reuses one compiled program.
            pad = lambda x: np.concatenate([x[start:start + n],
                                            np.repeat(x[start + n - 1:start + n], batch_size - n, 0)])
            mask = pad(q_mask)
            states = answering.encode_questions(self.model, self.params, jnp.asarray(pad(images)),
                                                jnp.asarray(pad(q_ids)), jnp.asarray(mask))
            if method == "generate":
                texts, toks = answering.generate_answers(
                    self.model, self.params, states, mask,
                    self.tokenizer, num_beams=num_beams, max_length=max_length,
                    min_length=min_length)
                out += [{"answer": t, "tokens": ids}
                        for t, ids in zip(texts[:n], decoding.caption_tokens_list(toks[:n]))]
                continue
            best, top_ids, scores = answering.rank_answers(
                self.model, self.params, states, jnp.asarray(mask), cand_ids, cand_mask, k=k_test)
            top_ids, scores = np.asarray(top_ids), np.asarray(scores)
            for i in range(n):
                order = np.argsort(-scores[i], kind="stable")[:top_k]
                out.append({"answer": cands.answers[int(best[i])],
                            "tokens": cands.tokens(int(best[i])),
                            "top_k": [{"answer": cands.answers[int(top_ids[i, j])],
                                       "score": float(scores[i, j])} for j in order]})
        return out

    def score(self, images: np.ndarray, texts: Sequence[str], max_length: int = 35):
        """(ITM match probability [N], ITC cosine [N]) for aligned image/text pairs."""
        if not (self.config.text_encoder and self.config.itc_itm_heads):
            raise ValueError("this checkpoint has no text encoder with ITM/ITC heads (a "
                             "captioning model?): it cannot score image-text pairs")
        cleaned = [tok.pre_caption(t) for t in texts]
        itm_ids, mask = self.tokenizer.encode(cleaned, max_length, bos_id=tok.ENC_ID)
        itc_ids, _ = self.tokenizer.encode(cleaned, max_length)
        itm, itc = _score(self.model, self.params, jnp.asarray(images), jnp.asarray(itm_ids),
                          jnp.asarray(itc_ids), jnp.asarray(mask))
        return np.asarray(itm), np.asarray(itc)


@functools.partial(jax.jit, static_argnums=0)
def _image_tokens(model: Blip, params, images):
    return model.apply({"params": params}, images, method=Blip.image_features)


@functools.partial(jax.jit, static_argnums=0)
def _score(model: Blip, params, images, itm_ids, itc_ids, mask):
    def fwd(m: Blip):
        tokens = m.image_features(images)
        logits = m.itm_logits(itm_ids, mask, tokens)
        cos = jnp.sum(m.image_embed(tokens) * m.text_embed(m.text_features(itc_ids, mask)), -1)
        return jax.nn.softmax(logits, -1)[:, 1], cos
    return model.apply({"params": params}, method=fwd)
