"""Convert PyTorch BLIP weights into a blip_jax checkpoint.

    python -m blip_jax.convert SRC DST [--image-size N]

SRC: an HF transformers BLIP directory (config.json + model.safetensors or pytorch_model.bin;
BlipForConditionalGeneration, BlipForImageTextRetrieval or BlipForQuestionAnswering) or an
original-release .pth file. DST: a blip_jax checkpoint directory (orbax params + config.json;
momentum copies and ITC queues of pre-training files go to DST/extras).
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m blip_jax.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--image-size", type=int, default=None,
                   help="target resolution; position embeddings are interpolated bicubically")
    args = p.parse_args(argv)
    from blip_jax.checkpoint import CheckpointMismatchError
    from blip_jax.convert import convert

    try:
        config, report = convert(args.src, args.dst, image_size=args.image_size)
    except (FileNotFoundError, CheckpointMismatchError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    v, t = config.vision, config.text
    print(f"wrote {args.dst}: ViT width {v.width} depth {v.depth} at {v.image_size}px; text hidden "
          f"{t.hidden_size} x {t.num_layers} layers; encoder={config.text_encoder} "
          f"decoder={config.text_decoder} tied={config.tie_encoder_decoder}")
    for line in report.interpolated:
        print(f"  interpolated {line}")
    if report.deduplicated:
        print(f"  {report.deduplicated} tied decoder tensors de-duplicated")
    for name in report.defaulted:
        print(f"  {name} not in the source: initialised to its default")
    if report.ignored:
        print(f"  ignored {len(report.ignored)} non-parameter entries (buffers, queues)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
