"""Smoke demo: a RANDOMLY INITIALISED tiny BLIP captions and scores a generated image.

    python -m blip_jax.demo [--workdir DIR]

It exercises the whole inference path (checkpoint save/load, image preprocessing, greedy
decoding with the key/value cache, ITM/ITC scoring). The model is untrained, so the caption is
random word pieces and the scores are meaningless: this proves the install, not the model.
"""

from __future__ import annotations

import argparse
import os
import sys

from PIL import Image, ImageDraw

from blip_jax import cli


def sample_image(path: str, size: int = 160) -> str:
    """A red circle left of a blue square on a light background."""
    img = Image.new("RGB", (size, size), (235, 232, 220))
    d = ImageDraw.Draw(img)
    d.ellipse((15, 50, 75, 110), fill=(200, 30, 30))
    d.rectangle((95, 60, 145, 110), fill=(30, 60, 200))
    img.save(path)
    return path


@cli.entry_point
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m blip_jax.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=os.path.join("outputs", "demo"))
    args = p.parse_args(argv)
    cli.check_output_dir(args.workdir, "--workdir")  # before jax starts

    import jax
    from blip_jax import caption, checkpoint, score
    from blip_jax.models import init_params, preset

    os.makedirs(args.workdir, exist_ok=True)
    ckpt = os.path.join(args.workdir, "tiny_random_model")
    config = preset("tiny")
    print("== blip_jax smoke demo: randomly initialised tiny model (untrained: expect a "
          "nonsense caption) ==")
    checkpoint.save_model(ckpt, init_params(config, jax.random.key(0)), config,
                          source="random init (blip_jax.demo)")
    print(f"saved checkpoint: {ckpt}")
    img = sample_image(os.path.join(args.workdir, "sample.png"))
    print(f"image: {img} (a red circle to the left of a blue square)")
    rc = caption.main(["--checkpoint", ckpt, "--json", img])
    rc |= score.main(["--checkpoint", ckpt, "--image", img, "--text",
                      "a red circle to the left of a blue square", "--json"])
    print("demo finished" if rc == 0 else "demo FAILED")
    return rc


if __name__ == "__main__":
    sys.exit(main())
