"""The paper's ViT-L/16 pre-training: batch 2400, lr 2e-4, decay 0.85/epoch, stochastic depth
0.1, gradient checkpointing of the ViT blocks.

    python -m blip_jax.train --config=configs/pretrain_large.py --workdir=DIR ...

Initialisation as the paper's (otherwise random), from local files (nothing is downloaded):
- ViT-L/16 ImageNet-21k: the original loads timm 0.4.12's `vit_large_patch16_224_in21k`
  weights, Google's AugReg release file
  L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1.npz (JAX layout, read as such);
  timm's own copy of these weights (`vit_large_patch16_224.augreg_in21k`, a timm-layout
  model.safetensors) works too.
- Text encoder and decoder from bert-base-uncased (an HF transformers directory).

    --config.init.vit=/weights/L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1.npz \
    --config.init.bert=/weights/bert-base-uncased

or convert once with `python -m blip_jax.convert --vit ... --bert ... --preset large DIR` and
pass --config.init_checkpoint=DIR.
"""

from blip_jax.train.defaults import base_config


def get_config():
    c = base_config("large", tie_encoder_decoder=True)
    c.model.vision.remat_layers = 12
    c.data.prepare_synthetic = False
    c.data.train_sources = [("blip_pairs/mine", "train")]
    c.data.eval_source = ("blip_coco_karpathy", "val")
    c.data.randaugment = True  # as the original: crop, flip and RandAugment(2, 5)
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
