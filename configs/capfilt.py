"""CapFilt over the built-in synthetic web split (train_web), with a fine-tuned captioner and
filter (every key is documented in blip_jax/capfilt/defaults.py).

    python -m blip_jax.capfilt --config=configs/capfilt.py --workdir=/tmp/capfilt \
        --config.captioner_checkpoint=CAPTIONER_DIR --config.filter_checkpoint=FILTER_DIR
"""

from blip_jax.capfilt.defaults import default_config


def get_config():
    return default_config()
