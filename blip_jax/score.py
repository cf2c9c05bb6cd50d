"""Score how well a text matches an image: ITM match probability and ITC cosine similarity.

    python -m blip_jax.score --checkpoint DIR --image IMG --text TEXT [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from blip_jax.image import ImageError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m blip_jax.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="blip_jax checkpoint directory")
    p.add_argument("--image", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from blip_jax.inference import Predictor

    predictor = Predictor.load(args.checkpoint)
    try:
        images = predictor.load_images([args.image])
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    itm, itc = predictor.score(images, [args.text])
    if args.json:
        print(json.dumps({"itm": float(itm[0]), "itc": float(itc[0])}))
    else:
        print(f"ITM match probability: {itm[0]:.4f}\nITC cosine similarity: {itc[0]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
