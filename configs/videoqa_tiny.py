"""Zero-shot video question answering on the built-in synthetic clips with the tiny VQA model
(configs/vqa_tiny.py): no video training; 16 frames, the answer list ranked. Recipe:
blip_jax/experiments/tiny.py `videoqa`.

    python -m blip_jax.evaluate --config=configs/videoqa_tiny.py --checkpoint=/tmp/vqa_tiny/model
"""

from blip_jax.experiments import tiny


def get_config():
    return tiny.videoqa()
