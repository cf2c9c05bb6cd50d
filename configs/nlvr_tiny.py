"""Tiny NLVR2 model fine-tuned on the synthetic two-image task (true/false statements about a
pair of the built-in scenes: counts, colours and shapes in the left, right, both or neither
image) from a tiny pre-training run: the paper's NLVR2 recipe in miniature. Recipe:
blip_jax/experiments/tiny.py.

    python -m blip_jax.train --config=configs/pretrain_tiny.py --workdir=/tmp/pretrain_tiny
    python -m blip_jax.train --config=configs/nlvr_tiny.py --workdir=/tmp/nlvr_tiny \
        --config.init_checkpoint=/tmp/pretrain_tiny/model
    python -m blip_jax.evaluate --config=configs/nlvr_tiny.py \
        --checkpoint=/tmp/nlvr_tiny/model_best --split=test
"""

from blip_jax.experiments import tiny


def get_config():
    return tiny.nlvr()
