"""The paper's ViT-B/16 pre-training (REFERENCE §2): 224 px, global batch 2880, AdamW 3e-4,
wd 0.05, 3000 warm-up steps, lr x0.9 per epoch, 20 epochs, queue 57600, alpha 0.4.

    python -m blip_jax.train --config=configs/pretrain_base.py --workdir=DIR \
        --config.data.data_dir=DIR --config.data.train_sources="[('my_dataset','train')]"
"""

from blip_jax.train.defaults import base_config


def get_config():
    c = base_config("base", tie_encoder_decoder=True)
    c.data.prepare_synthetic = False
    c.data.train_sources = [("blip_pairs/mine", "train")]
    c.data.eval_source = ("blip_coco_karpathy", "val")
    c.data.randaugment = False  # the original pre-training applies crop + flip only
    c.data.workers = 8
    c.batch_size = 2880
    c.steps_per_epoch = 0
    c.total_steps = 20 * 4900  # 20 epochs of the 14M set at batch 2880
    c.log_every_steps = 50
    c.checkpoint_every_steps = 2000
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 3000
    c.optim.decay_rate = 0.9
    c.loss.queue_size = 57600
    c.mesh = {"data": 1, "fsdp": -1, "tensor": 1}
    c.eval.every_steps = 5000
    return c
