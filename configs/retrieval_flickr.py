"""Flickr30k retrieval fine-tune (REFERENCE §4): as configs/retrieval_coco.py but on the
Flickr30k Karpathy splits, ITM negatives sampled within each data shard (the original's
negative_all_rank=False) and the 1k test re-ranked over each query's top 128.

    python -m blip_jax.data.prepare --source flickr_karpathy --data_dir DATA \
        --annotations dataset_flickr30k.json --image_root FLICKR_IMAGES
    python -m blip_jax.train --config=configs/retrieval_flickr.py --workdir=DIR \
        --config.data.data_dir=DATA --config.init_checkpoint=/ckpt/blip_base
"""

import importlib.util
import os

FLICKR_TRAIN_PAIRS = 145_000  # 29k images x 5 captions


def get_config():
    # configs/ is not a package: load the COCO recipe from its file.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "retrieval_coco.py")
    spec = importlib.util.spec_from_file_location("retrieval_coco", path)
    coco = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(coco)
    return coco.get_config(dataset="blip_flickr_karpathy", train_pairs=FLICKR_TRAIN_PAIRS,
                           k_test=128, negatives="local")
