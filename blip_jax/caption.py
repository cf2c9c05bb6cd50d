"""Caption images with a blip_jax checkpoint (greedy decoding).

    python -m blip_jax.caption --checkpoint DIR [--json] IMAGE [IMAGE ...]
"""

from __future__ import annotations

import argparse
import json
import sys

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
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from blip_jax.inference import Predictor  # after parsing: --help stays instant

    predictor = Predictor.load(args.checkpoint)
    paths, images, failed = [], [], []
    for path in args.images:
        try:
            images.append(predictor.load_images([path])[0])
            paths.append(path)
        except ImageError as e:
            failed.append(str(e))
            print(f"skipped {e}", file=sys.stderr)
    if images:
        import numpy as np
        texts, tokens = predictor.caption(
            np.stack(images), prompt=args.prompt, max_length=args.max_length,
            min_length=args.min_length, batch_size=args.batch_size)
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
