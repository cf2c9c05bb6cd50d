"""Score how well a text matches an image: ITM match probability and ITC cosine similarity.

    python -m blip_jax.score --checkpoint DIR --image IMG --text TEXT [--json] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import sys

from blip_jax import cli, image
from blip_jax.tokenizer import pre_caption


@cli.entry_point
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m blip_jax.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="blip_jax checkpoint directory")
    p.add_argument("--image", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument("--dtype", default="float32",
                   help="computation dtype: float32 or bfloat16 (weights cast to bfloat16 at "
                        "load; softmax, LayerNorm statistics and logits stay float32)")
    args = p.parse_args(argv)
    from blip_jax.inference import Predictor, check_dtype  # after parsing: --help stays instant

    check_dtype(args.dtype)
    # Checked before the checkpoint loads: the model would score an empty text without a word.
    if not pre_caption(args.text):
        raise cli.UserError(f"--text {args.text!r} has no words to score (after BLIP's cleaning: "
                            "lower case, punctuation removed); give a caption, e.g. --text "
                            "\"a dog on a beach\"")
    img = image.open_rgb(args.image)  # ImageError names the file
    predictor = Predictor.load(args.checkpoint, dtype=args.dtype)
    images = image.preprocess(img, predictor.config.vision.image_size)[None]
    itm, itc = predictor.score(images, [args.text])
    if args.json:
        print(json.dumps({"itm": float(itm[0]), "itc": float(itc[0])}))
    else:
        print(f"ITM match probability: {itm[0]:.4f}\nITC cosine similarity: {itc[0]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
