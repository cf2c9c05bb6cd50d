"""COCO captioning fine-tune of a pre-trained ViT-B BLIP, the paper's recipe (REFERENCE §4):
384 px, LM loss only with the prompt "a picture of " prepended and excluded from the loss,
AdamW lr 1e-5, wd 0.05, cosine over 5 epochs stepped once per epoch (the original's
cosine_lr_schedule: constant within an epoch, never 0), global batch 256 (32 x 8 GPUs); beam
search 3 / min 5 / max 20 on the Karpathy test split.

    python -m blip_jax.data.prepare --source coco_karpathy --data_dir DATA \
        --annotations dataset_coco.json --image_root COCO_IMAGES
    python -m blip_jax.convert model_base.pth /ckpt/blip_base --image-size 384
    python -m blip_jax.train --config=configs/caption_coco.py --workdir=DIR \
        --config.data.data_dir=DATA --config.init_checkpoint=/ckpt/blip_base
    python -m blip_jax.evaluate --config=configs/caption_coco.py --checkpoint=DIR/model \
        --config.data.data_dir=DATA --split=test
"""

from blip_jax.train.defaults import base_config

COCO_TRAIN_PAIRS = 566_747  # Karpathy train + restval captions


def get_config():
    c = base_config("base", tie_encoder_decoder=False, text_encoder=False, itc_itm_heads=False)
    c.task = "caption"
    c.model.vision.image_size = 384
    c.data.prepare_synthetic = False
    c.data.train_sources = [("blip_coco_karpathy", "train")]
    c.data.eval_source = ("blip_coco_karpathy", "val")
    c.data.crop_scale = (0.5, 1.0)  # the original fine-tuning crop
    c.data.randaugment = True
    c.data.max_tokens = 40
    c.data.workers = 8
    c.batch_size = 256
    c.steps_per_epoch = COCO_TRAIN_PAIRS // c.batch_size
    c.total_steps = 5 * c.steps_per_epoch
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.optim.schedule = "cosine_epoch"  # per-step cosine to min_lr: "cosine"
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 0
    c.optim.min_lr = 0.0
    c.optim.weight_decay = 0.05
    c.loss.itc_weight = 0.0
    c.loss.itm_weight = 0.0
    c.loss.lm_weight = 1.0
    c.loss.prompt = "a picture of "
    c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
    c.eval.every_steps = c.steps_per_epoch
    c.eval.max_images = 0
    c.eval.batch_size = 64
    c.eval.num_beams = 3
    c.eval.max_length = 20
    c.eval.min_length = 5
    return c
