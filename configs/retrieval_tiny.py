"""Tiny retrieval fine-tune on the synthetic clean split from a tiny pre-training run: the
paper's retrieval recipe in miniature (ITC with image-id positives and an id queue, ITM with
online x online negatives with same-id pairs masked, per-epoch cosine schedule; evaluation
re-ranks each query's top k by ITM).
Recipe: blip_jax/experiments/tiny.py.

    python -m blip_jax.train --config=configs/retrieval_tiny.py --workdir=/tmp/retrieval_tiny \
        --config.init_checkpoint=/tmp/pretrain_tiny/model
    python -m blip_jax.evaluate --config=configs/retrieval_tiny.py \
        --checkpoint=/tmp/retrieval_tiny/model --split=test
"""

from blip_jax.experiments import tiny


def get_config():
    return tiny.retrieval()
