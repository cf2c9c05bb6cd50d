"""VQA rank-inference throughput: blip_jax vs the original BLIP's algorithm in PyTorch, same weights.

    python benchmarks/vqa.py [--config base] [--image-size 480] [--batch 8] [--num-answers 3128]
                             [--k-test 128] [--repeats 3]

A VQA model of the preset (random init, blip_jax's init; decoder cross-attending to the
question, untied encoder/decoder, no ITC/ITM heads) is exported to an HF transformers directory
and loaded by both sides: blip_jax.convert.load_hf and BlipForQuestionAnswering (eval, float32;
a forward pre-hook hands the cross-attention mask on, which transformers 5.x drops).
The answer list is `--num-answers` distinct made-up answers (1-3 random words of the packaged
bert-base-uncased vocabulary) tokenised with answering.AnswerCandidates.build; the batch is
`--batch` random images with questions of ~10 tokens padded to 35 as the pipeline pads them.

It times end to end, normalised pixels + tokenised questions -> chosen answer index:
blip_jax = jitted answering.encode_questions + jitted answering.rank_answers(k=--k-test)
(compiled by one untimed call), PyTorch = salesforce/BLIP models/blip_vqa.py
forward(train=False, inference='rank') + rank_answer restated on the HF modules under
torch.no_grad (vision_model -> text_encoder with [ENC] first and an all-ones image mask ->
text_decoder on [DEC] alone -> softmax at the answers' first tokens, top k -> the k candidates
per question against the question states repeated k times -> summed label-smoothed (0.1)
cross-entropy per answer -> argmax; one untimed warm-up). Before timing, the answers both sides
pick for the batch are compared (at random weights near-ties may differ: the count is reported,
not asserted). It also times each side's vision tower alone; "rank s" is the end-to-end time
minus it (question encoding + answer ranking). Medians over `--repeats` runs; prints a table
and writes benchmarks/results/vqa.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import common
from blip_jax import answering, tokenizer as tok
from blip_jax.convert import export_hf, load_hf
from blip_jax.models import Blip, init_params, preset

QUESTION_TOKENS, LABEL_SMOOTHING = 35, 0.1
VOCAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "blip_jax", "assets", "bert-base-uncased-vocab.txt")


def patch_cross_attention_mask(model) -> int:
    """transformers 5.x BLIP text cross-attention passes the encoder mask on as `attention_mask`
    and then reads `encoder_attention_mask` (None), so padded question positions would be
    attended to by the answer decoder. This pre-hook on every cross-attention self-attention
    module supplies the mask under the name read (harmless once fixed upstream)."""

    def hook(module, args, kwargs):
        if kwargs.get("encoder_hidden_states") is not None \
                and kwargs.get("encoder_attention_mask") is None:
            kwargs["encoder_attention_mask"] = kwargs.get("attention_mask")
        return args, kwargs

    patched = 0
    for name, module in model.named_modules():
        if name.endswith("crossattention.self"):
            module.register_forward_pre_hook(hook, with_kwargs=True)
            patched += 1
    return patched


def build(config_name: str, image_size: int, workdir: str):
    """(blip_jax config, params, HF VQA model) sharing one set of random weights."""
    import torch
    from transformers import BlipForQuestionAnswering
    base = preset(config_name)
    config = base.replace(tie_encoder_decoder=False, itc_itm_heads=False,
                          decoder_context="question",
                          vision=dataclasses.replace(base.vision, image_size=image_size))
    export_hf(init_params(config, jax.random.key(0)), config, workdir, "vqa")
    config, params, _ = load_hf(workdir)
    hf = BlipForQuestionAnswering.from_pretrained(workdir, dtype=torch.float32).eval()
    if not patch_cross_attention_mask(hf):
        raise RuntimeError("no cross-attention module found to patch in the HF model")
    return config, jax.tree_util.tree_map(jnp.asarray, params), hf


def made_up_text(num_answers: int, batch: int, seed: int):
    """(num_answers distinct answers of 1-3 vocabulary words, batch questions of ~8 words)."""
    with open(VOCAB, encoding="utf-8") as f:
        words = [w for w in (line.strip() for line in f) if w.isalpha() and w.isascii()
                 and len(w) >= 3]
    rng = np.random.default_rng(seed)
    answers: dict[str, None] = {}
    while len(answers) < num_answers:
        answers[" ".join(rng.choice(words, int(rng.integers(1, 4))))] = None
    questions = ["what is the " + " ".join(rng.choice(words, 5)) + " ?" for _ in range(batch)]
    return list(answers), questions


def original_rank(hf, pixels, q_ids, q_mask, a_ids, a_mask, k: int):
    """blip_vqa.py forward(train=False, inference='rank') + rank_answer on the HF modules.
    Returns (max_ids [Q], topk_ids [Q, k]) as torch tensors."""
    import torch
    import torch.nn.functional as F
    with torch.no_grad():
        image_embeds = hf.vision_model(pixel_values=pixels).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
        enc_ids = q_ids.clone()
        enc_ids[:, 0] = tok.ENC_ID
        states = hf.text_encoder(input_ids=enc_ids, attention_mask=q_mask,
                                 encoder_hidden_states=image_embeds,
                                 encoder_attention_mask=image_atts).last_hidden_state
        num_q = states.shape[0]
        # First answer token's probability from [DEC] alone, at every candidate's first token.
        bos = a_ids[0, 0].repeat(num_q, 1)
        first_logits = hf.text_decoder(input_ids=bos, encoder_hidden_states=states,
                                       encoder_attention_mask=q_mask).logits[:, 0, :]
        first_prob = F.softmax(first_logits, dim=1).index_select(1, a_ids[:, 1])
        _, topk_ids = first_prob.topk(k, dim=1)
        flat = topk_ids.reshape(-1)  # question-major: question b's k candidates consecutively
        ids, atts = a_ids.index_select(0, flat), a_mask.index_select(0, flat)
        logits = hf.text_decoder(input_ids=ids, attention_mask=atts,
                                 encoder_hidden_states=states.repeat_interleave(k, dim=0),
                                 encoder_attention_mask=q_mask.repeat_interleave(k, dim=0)).logits
        targets = ids.masked_fill(ids == tok.PAD_ID, -100)[:, 1:]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               reduction="none", label_smoothing=LABEL_SMOOTHING, ignore_index=-100)
        log_probs_sum = -loss.view(num_q * k, -1).sum(1).view(num_q, k)
        best = log_probs_sum.argmax(dim=1)
        return topk_ids[torch.arange(num_q), best], topk_ids


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="base")
    p.add_argument("--image-size", type=int, default=480)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--num-answers", type=int, default=3128)
    p.add_argument("--k-test", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.k_test > args.num_answers:
        p.error(f"--k-test {args.k_test} exceeds --num-answers {args.num_answers}")
    import torch

    with tempfile.TemporaryDirectory() as workdir:
        config, params, hf = build(args.config, args.image_size, workdir)
    model = Blip(config)

    answers, questions = made_up_text(args.num_answers, args.batch, seed=0)
    tokenizer = tok.BlipTokenizer()
    candidates = answering.AnswerCandidates.build(answers, tokenizer)
    q_ids, q_mask = tokenizer.encode(questions, QUESTION_TOKENS)
    images = np.random.default_rng(0).normal(
        size=(args.batch, args.image_size, args.image_size, 3)).astype(np.float32)

    # The answer list is tokenised once and kept on the device, as evaluation does.
    a_ids_j, a_mask_j = jnp.asarray(candidates.ids), jnp.asarray(candidates.mask)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))
    pixels = t(images.transpose(0, 3, 1, 2))
    q_ids_t, q_mask_t = t(q_ids.astype(np.int64)), t(q_mask.astype(np.int64))
    a_ids_t, a_mask_t = t(candidates.ids.astype(np.int64)), t(candidates.mask.astype(np.int64))

    def run_ours():
        states = answering.encode_questions(model, params, jnp.asarray(images),
                                            jnp.asarray(q_ids), jnp.asarray(q_mask))
        best, top_ids, _ = answering.rank_answers(model, params, states, jnp.asarray(q_mask),
                                                  a_ids_j, a_mask_j, k=args.k_test)
        return np.asarray(best.block_until_ready()), np.asarray(top_ids)

    def run_theirs():
        best, top_ids = original_rank(hf, pixels, q_ids_t, q_mask_t, a_ids_t, a_mask_t,
                                      args.k_test)
        return best.numpy(), top_ids.numpy()

    vit = jax.jit(lambda p, x: model.apply({"params": p}, x, method=Blip.image_features))

    def vision_theirs():
        with torch.no_grad():
            return hf.vision_model(pixel_values=pixels).last_hidden_state

    t0 = time.perf_counter()
    ours_best, ours_top = run_ours()  # compile
    compile_s = time.perf_counter() - t0
    theirs_best, theirs_top = run_theirs()  # warm-up
    agree = int((ours_best == theirs_best).sum())
    topk_agree = int(sum(set(a) == set(b) for a, b in zip(ours_top, theirs_top)))
    print(f"answers agree on {agree}/{args.batch} questions "
          f"(same top-{min(args.k_test, args.num_answers)} candidate set on "
          f"{topk_agree}/{args.batch})")

    vit(params, jnp.asarray(images)).block_until_ready()  # compile
    vision_theirs()  # warm-up
    ours_vit, ours_vit_all, _ = common.median_time(
        lambda: vit(params, jnp.asarray(images)).block_until_ready(), args.repeats)
    theirs_vit, theirs_vit_all, _ = common.median_time(vision_theirs, args.repeats)
    ours_s, ours_all, _ = common.median_time(run_ours, args.repeats)
    theirs_s, theirs_all, _ = common.median_time(run_theirs, args.repeats)

    rows = [
        {"side": "blip_jax", "seconds_median": ours_s, "seconds_all": ours_all,
         "compile_seconds": compile_s, "questions_per_sec": args.batch / ours_s,
         "vision_seconds_median": ours_vit, "vision_seconds_all": ours_vit_all,
         "rank_seconds": ours_s - ours_vit},
        {"side": "original (torch)", "seconds_median": theirs_s, "seconds_all": theirs_all,
         "questions_per_sec": args.batch / theirs_s,
         "vision_seconds_median": theirs_vit, "vision_seconds_all": theirs_vit_all,
         "rank_seconds": theirs_s - theirs_vit},
    ]
    speedup = theirs_s / ours_s
    rank_speedup = (theirs_s - theirs_vit) / (ours_s - ours_vit)

    print(f"{args.config} config, {args.image_size} px, batch {args.batch}, "
          f"{args.num_answers} answers (longest {candidates.ids.shape[1]} tokens), "
          f"k {args.k_test}, {jax.devices()[0].platform} ({os.cpu_count()} cores), "
          f"medians of {args.repeats}")
    print(f"{'side':17} {'total s':>8} {'q/s':>8} {'ViT s':>7} {'rank s':>7} {'speed-up':>8}")
    for r, s in zip(rows, (f"{speedup:.2f}x", "1.00x")):
        print(f"{r['side']:17} {r['seconds_median']:>8.2f} {r['questions_per_sec']:>8.2f} "
              f"{r['vision_seconds_median']:>7.2f} {r['rank_seconds']:>7.2f} {s:>8}")
    print(f"speed-up ours/original: end to end {speedup:.2f}x, rank only {rank_speedup:.2f}x")

    out = {"config": args.config, "image_size": args.image_size, "batch": args.batch,
           "num_answers": args.num_answers, "k_test": args.k_test,
           "answer_tokens": int(candidates.ids.shape[1]), "question_tokens": QUESTION_TOKENS,
           "question_lengths": q_mask.sum(1).tolist(), "repeats": args.repeats, "rows": rows,
           "speedup": speedup, "rank_speedup": rank_speedup,
           "answers_agree": agree, "topk_sets_agree": topk_agree,
           "ours_answers": ours_best.tolist(), "original_answers": theirs_best.tolist(),
           "settings": {"label_smoothing": LABEL_SMOOTHING, "answer_list": "made-up, seed 0"},
           **common.machine_with_torch()}
    common.write_result("vqa", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
