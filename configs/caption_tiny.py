"""Tiny captioner fine-tuned on the synthetic clean split from a tiny pre-training run: the
paper's captioning recipe in miniature (LM only, prompt "a picture of " excluded from the loss,
per-epoch cosine schedule; beam search 3 / min 5 / max 20 at evaluation). Recipe:
blip_jax/experiments/tiny.py.

    python -m blip_jax.train --config=configs/pretrain_tiny.py --workdir=/tmp/pretrain_tiny
    python -m blip_jax.train --config=configs/caption_tiny.py --workdir=/tmp/caption_tiny \
        --config.init_checkpoint=/tmp/pretrain_tiny/model
    python -m blip_jax.evaluate --config=configs/caption_tiny.py \
        --checkpoint=/tmp/caption_tiny/model --split=test
"""

from blip_jax.experiments import tiny


def get_config():
    return tiny.caption()
