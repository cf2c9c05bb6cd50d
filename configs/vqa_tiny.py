"""Tiny VQA model fine-tuned on the synthetic VQA task (questions about colour, shape, count,
size and relations of the built-in scenes, 10 annotator answers each) from a tiny pre-training
run: the paper's VQA recipe in miniature. Recipe: blip_jax/experiments/tiny.py.

    python -m blip_jax.train --config=configs/pretrain_tiny.py --workdir=/tmp/pretrain_tiny
    python -m blip_jax.train --config=configs/vqa_tiny.py --workdir=/tmp/vqa_tiny \
        --config.init_checkpoint=/tmp/pretrain_tiny/model
    python -m blip_jax.evaluate --config=configs/vqa_tiny.py \
        --checkpoint=/tmp/vqa_tiny/model --split=test
"""

from blip_jax.experiments import tiny


def get_config():
    return tiny.vqa()
