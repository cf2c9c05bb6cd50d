"""The paper's ViT-B/16 pre-training (REFERENCE §2): 224 px, global batch 2880, AdamW 3e-4,
wd 0.05, 3000 warm-up steps, lr x0.9 per epoch, 20 epochs, queue 57600, alpha 0.4.

    python -m blip_jax.train --config=configs/pretrain_base.py --workdir=DIR \
        --config.data.data_dir=DIR --config.data.train_sources="[('my_dataset','train')]"

Initialisation as the paper's (otherwise random): local copies of the files, nothing is
downloaded at run time.
- ViT from DeiT-B/16 (ImageNet-1k, not distilled): the file the original loads through torch hub,
  https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth ({'model': state_dict}
  in timm layout); an HF directory of the same weights (facebook/deit-base-patch16-224) works too.
- Text encoder and decoder from bert-base-uncased: an HF transformers directory (config.json +
  model.safetensors or pytorch_model.bin, as saved by `save_pretrained` or a hub download).

    --config.init.vit=/weights/deit_base_patch16_224-b5f2ef4d.pth \
    --config.init.bert=/weights/bert-base-uncased

or convert once (`python -m blip_jax.convert --vit ... --bert ... --preset base DIR`) and pass
--config.init_checkpoint=DIR. What is loaded and what stays random is printed at start-up.
"""

from blip_jax.train.defaults import base_config


def get_config():
    c = base_config("base", tie_encoder_decoder=True)
    c.data.prepare_synthetic = False
    c.data.train_sources = [("blip_pairs/mine", "train")]
    c.data.eval_source = ("blip_coco_karpathy", "val")
    c.data.randaugment = True  # as the original: crop, flip and RandAugment(2, 5)
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
