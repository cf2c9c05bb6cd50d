"""Zero-shot text-video retrieval on the built-in synthetic clips with the tiny image-text
retrieval model (configs/retrieval_tiny.py): no video training. Recipe:
blip_jax/experiments/tiny.py `video_retrieval`.

    python -m blip_jax.evaluate --config=configs/retrieval_video_tiny.py \
        --checkpoint=/tmp/retrieval_tiny/model
"""

from blip_jax.experiments import tiny


def get_config():
    return tiny.video_retrieval()
