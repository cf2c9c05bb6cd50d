"""Caption images with a blip_jax checkpoint: beam search (3 beams, the paper's setting),
greedy (--beams 1) or nucleus sampling (--top-p 0.9 --seed S), in float32 or bfloat16.

    python -m blip_jax.caption --checkpoint DIR [--json] [--beams N | --top-p P]
        [--dtype bfloat16] IMAGE [IMAGE ...]
"""

from __future__ import annotations

import argparse
import json
import sys

from blip_jax import cli, image
from blip_jax.image import ImageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m blip_jax.caption", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", required=True, help="blip_jax checkpoint directory")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--prompt", default="a picture of ",
                   help="text prefix given to the decoder and stripped from the output")
    p.add_argument("--max-length", type=int, default=20, help="tokens incl. [DEC] and prompt")
    p.add_argument("--min-length", type=int, default=5, help="tokens incl. [DEC] and prompt")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--beams", type=int, default=3, help="beam search width; 1 = greedy")
    p.add_argument("--top-p", type=float, default=0.0,
                   help="> 0: nucleus sampling with this top-p instead of beam search")
    p.add_argument("--seed", type=int, default=0, help="random seed of nucleus sampling")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 discourages repeated tokens (CapFilt sampling used 1.1)")
    p.add_argument("--length-norm", choices=("original", "generated"), default="original",
                   help="beam search: a finished caption's log-probability is divided by its "
                        "whole length ([DEC] and prompt included, as the original BLIP's "
                        "transformers 4 did) or by its generated length (transformers 5)")
    p.add_argument("--dtype", default="float32",
                   help="computation dtype: float32 or bfloat16 (weights cast to bfloat16 at "
                        "load; softmax, LayerNorm statistics and logits stay float32)")
    return p


@cli.entry_point
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.beams < 1:
        parser.error(f"--beams must be >= 1 (1 = greedy), got {args.beams}")
    if not 0.0 <= args.top_p <= 1.0:
        parser.error(f"--top-p must be in [0, 1] (0 = beam search or greedy), got {args.top_p}")
    from blip_jax.inference import Predictor, check_dtype  # after parsing: --help stays instant

    check_dtype(args.dtype)
    # Images are opened before the checkpoint loads, so a wrong path fails at once.
    paths, opened, failed = [], [], []
    for path in args.images:
        try:
            opened.append(image.open_rgb(path))
            paths.append(path)
        except ImageError as e:
            failed.append(str(e))
    if not opened:
        for message in failed:
            print(f"error: {message}", file=sys.stderr)
        return 1
    for message in failed:
        print(f"skipped {message}", file=sys.stderr)
    predictor = Predictor.load(args.checkpoint, dtype=args.dtype)
    images = [image.preprocess(img, predictor.config.vision.image_size) for img in opened]
    if images:
        import numpy as np
        texts, tokens = predictor.caption(
            np.stack(images), prompt=args.prompt, max_length=args.max_length,
            min_length=args.min_length, batch_size=args.batch_size, num_beams=args.beams,
            top_p=args.top_p, seed=args.seed, repetition_penalty=args.repetition_penalty,
            length_norm=args.length_norm)
        for path, text, ids in zip(paths, texts, tokens):
            if args.json:
                print(json.dumps({"image": path, "caption": text, "tokens": ids}))
            else:
                print(f"{path}: {text}")
    if failed:
        print(f"{len(failed)} of {len(args.images)} image(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
