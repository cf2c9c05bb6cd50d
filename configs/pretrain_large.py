"""The paper's ViT-L/16 pre-training: batch 2400, lr 2e-4, decay 0.85/epoch, stochastic depth
0.1, gradient checkpointing of the ViT blocks.

    python -m blip_jax.train --config=configs/pretrain_large.py --workdir=DIR ...
"""

from blip_jax.train.defaults import base_config


def get_config():
    c = base_config("large", tie_encoder_decoder=True)
    c.model.vision.remat_layers = 12
    c.data.prepare_synthetic = False
    c.data.train_sources = [("blip_pairs/mine", "train")]
    c.data.eval_source = ("blip_coco_karpathy", "val")
    c.data.randaugment = False
    c.data.workers = 8
    c.batch_size = 2400
    c.total_steps = 20 * 5880
    c.log_every_steps = 50
    c.checkpoint_every_steps = 2000
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 3000
    c.optim.decay_rate = 0.85
    c.loss.queue_size = 57600
    c.mesh = {"data": 1, "fsdp": -1, "tensor": 1}
    c.eval.every_steps = 5000
    return c
