"""Convert PyTorch BLIP weights into a blip_jax checkpoint.

    python -m blip_jax.convert SRC DST [--image-size N]
    python -m blip_jax.convert --vit PATH --bert PATH --preset base [--image-size N] [--seed S] DST

SRC: an HF transformers BLIP directory (config.json + model.safetensors or pytorch_model.bin;
BlipForConditionalGeneration, BlipForImageTextRetrieval or BlipForQuestionAnswering) or an
original-release .pth file. DST: a blip_jax checkpoint directory (orbax params + config.json;
momentum copies and ITC queues of pre-training files go to DST/extras).

With --vit/--bert: a tied pre-training model of the preset, freshly initialised, with its ViT
from ImageNet weights (HF ViT/DeiT directory, timm-layout .pth/.safetensors such as DeiT's
torch-hub file, or a JAX ViT .npz) and its text encoder and decoder from BERT (HF BERT
directory), as the paper's pre-training starts; start from it with config.init_checkpoint=DST.
"""

from __future__ import annotations

import argparse
import json
import sys

from blip_jax import cli


@cli.entry_point
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m blip_jax.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST", nargs="?")
    p.add_argument("--image-size", type=int, default=None,
                   help="target resolution; position embeddings are interpolated bicubically")
    p.add_argument("--vit", help="ImageNet ViT weights to start from (then give DST only)")
    p.add_argument("--bert", help="BERT weights (HF directory) for the text encoder and decoder")
    p.add_argument("--preset", choices=["tiny", "small", "base", "large"],
                   help="model size with --vit/--bert (base: ViT-B/16, large: ViT-L/16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the parts left random")
    args = p.parse_args(argv)
    if args.vit or args.bert:
        if args.dst is not None:
            raise cli.UserError("with --vit/--bert give only DST (the sources are the flags)")
        args.src, args.dst = None, args.src
    elif args.dst is None:
        p.error("the following arguments are required: DST")
    cli.check_output_dir(args.dst, "DST")  # before the weights are read, not after
    from safetensors import SafetensorError

    from blip_jax.convert import convert

    if args.vit or args.bert:
        return _pretrained_init(args)
    try:
        config, report = convert(args.src, args.dst, image_size=args.image_size)
    except SafetensorError as e:  # a truncated or corrupt download: the error does not name it
        raise cli.UserError(f"{args.src}: unreadable safetensors weights ({e})") from e
    except json.JSONDecodeError as e:  # config.json or the safetensors index
        raise cli.UserError(f"{args.src}: a JSON file in it is not valid JSON ({e})") from e
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


def _pretrained_init(args) -> int:
    from blip_jax.convert.pretrained_init import convert_init
    from blip_jax.models.config import preset

    if args.preset is None:
        raise cli.UserError("--preset is required with --vit/--bert (tiny, small, base, large)")
    config, report = convert_init(args.dst, args.preset, vit=args.vit, bert=args.bert,
                                  image_size=args.image_size, seed=args.seed)
    v = config.vision
    print(f"wrote {args.dst}: {args.preset} pre-training model (tied), ViT at {v.image_size}px, "
          f"ViT from {args.vit or 'random'}, text from {args.bert or 'random'}")
    for line in report.lines() + report.eps_notes(preset(args.preset)):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
