"""Caption decoding throughput: blip_jax vs transformers' generate, same weights, same images.

    python benchmarks/decode.py [--config base] [--image-size 384] [--batch 4] [--repeats 3]
        [--dtype float32[,bfloat16]] [--result decode]

A captioning model of the preset (random init, blip_jax's init) is exported to an HF
transformers directory and loaded by both sides. For beam search (3 beams, min 5, max 20) and
nucleus sampling (top_p 0.9, min 5, max 20) it times end to end, pixels -> tokens, for a batch of
images: blip_jax = jitted ViT + jitted decoder (compiled before timing), transformers =
BlipForConditionalGeneration.generate under torch.no_grad (one untimed warm-up call each
side). It also times the vision tower of
each side alone, so the decoding share is known. Medians over `--repeats` runs; prints a table
and writes benchmarks/results/RESULT.json (default decode.json).

`--dtype float32,bfloat16` times blip_jax once per computation dtype (inference.with_dtype: the
params cast once, as `--dtype` of the inference commands does) against the one float32
transformers model, every repeat running each variant in turn (interleaved: a load change on
the machine hits all alike), and counts the captions each dtype's tokens share with float32's
(same weights, images and sampling keys).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import common
from blip_jax import decoding, tokenizer as tok
from blip_jax.convert import export_hf, load_hf
from blip_jax.inference import with_dtype
from blip_jax.models import Blip, init_params, preset

MAX_LENGTH, MIN_LENGTH, NUM_BEAMS, TOP_P = 20, 5, 3, 0.9


def build(config_name: str, image_size: int, workdir: str):
    """(blip_jax config, params, HF model) sharing one set of random weights."""
    import torch
    from transformers import BlipForConditionalGeneration
    base = preset(config_name)
    config = base.replace(text_encoder=False, itc_itm_heads=False,
                          vision=dataclasses.replace(base.vision, image_size=image_size))
    export_hf(init_params(config, jax.random.key(0)), config, workdir, "captioning")
    config, params, _ = load_hf(workdir)
    hf = BlipForConditionalGeneration.from_pretrained(workdir, dtype=torch.float32).eval()
    return config, jax.tree_util.tree_map(jnp.asarray, params), hf


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="base")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32",
                   help="comma-separated computation dtypes of blip_jax (float32, bfloat16)")
    p.add_argument("--result", default="decode", help="benchmarks/results/RESULT.json")
    args = p.parse_args()
    dtypes = args.dtype.split(",")
    import torch

    with tempfile.TemporaryDirectory() as workdir:
        config32, params32, hf = build(args.config, args.image_size, workdir)
    variants = {d: with_dtype(config32, params32, d) for d in dtypes}
    images = np.random.default_rng(0).normal(
        size=(args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    prefix = jnp.array([tok.DEC_ID])
    rng = jax.random.key(0)

    def ours_fns(config, params):
        model = Blip(config)
        vit = jax.jit(lambda p, x: model.apply({"params": p}, x, method=Blip.image_features))
        decode = {
            # transformers 5's length normalisation, so that its tokens can be checked identical.
            "beam": lambda ctx: decoding.beam_search(
                model, params, ctx, prefix, num_beams=NUM_BEAMS, max_length=MAX_LENGTH,
                min_length=MIN_LENGTH, length_norm="generated"),
            "nucleus": lambda ctx: decoding.nucleus_sample(model, params, ctx, prefix, rng,
                                                           top_p=TOP_P, max_length=MAX_LENGTH,
                                                           min_length=MIN_LENGTH),
        }
        vision = lambda: vit(params, jnp.asarray(images)).block_until_ready()  # noqa: E731
        run = {m: (lambda m=m: np.asarray(decode[m](vit(params, jnp.asarray(images)))))
               for m in decode}
        return vision, run

    ours = {d: ours_fns(*variants[d]) for d in dtypes}
    theirs = {
        # top_k=0: transformers would otherwise add its default top-k 50 to the nucleus.
        "beam": dict(num_beams=NUM_BEAMS, do_sample=False),
        "nucleus": dict(num_beams=1, do_sample=True, top_p=TOP_P, top_k=0),
    }

    def run_theirs(method):
        with torch.no_grad():
            return hf.generate(pixel_values=pixels, max_length=MAX_LENGTH, min_length=MIN_LENGTH,
                               **theirs[method]).numpy()

    def vision_theirs():
        with torch.no_grad():
            return hf.vision_model(pixel_values=pixels).last_hidden_state

    def interleaved(fns: dict) -> dict:
        """{name: (median s, all s, last output)}, each repeat calling every fn in turn."""
        times, last = {k: [] for k in fns}, {}
        for _ in range(args.repeats):
            for k, fn in fns.items():
                t = time.perf_counter()
                last[k] = fn()
                times[k].append(time.perf_counter() - t)
        return {k: (statistics.median(v), v, last[k]) for k, v in times.items()}

    for d in dtypes:
        ours[d][0]()  # compile
    vision_theirs()  # warm-up: torch's first call pays one-off allocation and dispatch costs
    vis = interleaved({**{d: ours[d][0] for d in dtypes}, "transformers": vision_theirs})
    rows = []
    for method in ("beam", "nucleus"):
        compile_s = {}
        for d in dtypes:
            t = time.perf_counter()
            ours[d][1][method]()  # compile
            compile_s[d] = time.perf_counter() - t
        run_theirs(method)  # warm-up
        timed = interleaved({**{d: ours[d][1][method] for d in dtypes},
                             "transformers": lambda: run_theirs(method)})
        theirs_s, theirs_all, theirs_tokens = timed["transformers"]
        theirs_vit = vis["transformers"][0]
        if method == "beam":
            ref = np.where(np.cumsum(theirs_tokens == tok.SEP_ID, 1) -
                           (theirs_tokens == tok.SEP_ID) > 0, tok.PAD_ID, theirs_tokens)
        base_tokens = timed[dtypes[0]][2]
        for d in dtypes:
            ours_s, ours_all, ours_tokens = timed[d]
            ours_vit = vis[d][0]
            row = {"method": method, "dtype": d, "batch": args.batch,
                   "ours_seconds_median": ours_s, "ours_seconds_all": ours_all,
                   "ours_compile_seconds": compile_s[d],
                   "ours_vision_seconds_median": ours_vit, "ours_vision_seconds_all": vis[d][1],
                   "transformers_seconds_median": theirs_s, "transformers_seconds_all": theirs_all,
                   "ours_captions_per_sec": args.batch / ours_s,
                   "transformers_captions_per_sec": args.batch / theirs_s,
                   "speedup": theirs_s / ours_s,
                   "ours_decode_only_seconds": ours_s - ours_vit,
                   "transformers_decode_only_seconds": theirs_s - theirs_vit,
                   "decode_only_speedup": (theirs_s - theirs_vit) / (ours_s - ours_vit),
                   "ours_mean_caption_tokens": float(np.mean(
                       [len(t) for t in decoding.caption_tokens_list(ours_tokens)])),
                   f"captions_equal_to_{dtypes[0]}": int(sum(
                       a == b for a, b in zip(decoding.caption_tokens_list(ours_tokens),
                                              decoding.caption_tokens_list(base_tokens))))}
            if method == "beam":
                row["tokens_identical"] = bool(np.array_equal(ours_tokens[:, : ref.shape[1]], ref))
            rows.append(row)

    print(f"{args.config} config, {args.image_size} px, batch {args.batch}, "
          f"{jax.devices()[0].platform} ({os.cpu_count()} cores), medians of {args.repeats}"
          + (" (interleaved)" if len(dtypes) > 1 else ""))
    print("vision tower alone: " + ", ".join(f"ours {d} {vis[d][0]:.2f} s" for d in dtypes)
          + f", transformers float32 {vis['transformers'][0]:.2f} s")
    print(f"{'method':8} {'dtype':9} {'ours s':>7} {'HF s':>7} {'ours cap/s':>10} {'HF cap/s':>9} "
          f"{'speedup':>7} {'decode-only speedup':>19} {'same as ' + dtypes[0]:>16}")
    for r in rows:
        print(f"{r['method']:8} {r['dtype']:9} {r['ours_seconds_median']:>7.2f} "
              f"{r['transformers_seconds_median']:>7.2f} {r['ours_captions_per_sec']:>10.2f} "
              f"{r['transformers_captions_per_sec']:>9.2f} {r['speedup']:>6.2f}x "
              f"{r['decode_only_speedup']:>18.2f}x "
              f"{r[f'captions_equal_to_{dtypes[0]}']:>12}/{args.batch}")
    out = {"config": args.config, "image_size": args.image_size, "dtypes": dtypes, "rows": rows,
           "ours_vision_seconds_median": vis[dtypes[0]][0],
           "ours_vision_seconds_all": vis[dtypes[0]][1],
           "transformers_vision_seconds_median": vis["transformers"][0],
           "transformers_vision_seconds_all": vis["transformers"][1],
           "settings": {"max_length": MAX_LENGTH, "min_length": MIN_LENGTH,
                        "num_beams": NUM_BEAMS, "top_p": TOP_P, "length_norm": "generated"},
           **common.machine_with_torch()}
    common.write_result(args.result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
