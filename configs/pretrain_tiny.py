"""Tiny BLIP pre-trained on the built-in synthetic data (noisy web split + clean split):
learns on a 2-core CPU in about 5 minutes (recipe: blip_jax/experiments/tiny.py).

    python -m blip_jax.train --config=configs/pretrain_tiny.py --workdir=/tmp/pretrain_tiny
"""

from blip_jax.experiments import tiny


def get_config():
    return tiny.pretrain()
