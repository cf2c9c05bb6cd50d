"""NLVR2 fine-tune of a pre-trained ViT-B BLIP, the paper's recipe (REFERENCE §4; the original's
configs/nlvr.yaml, train_nlvr.py, models/blip_nlvr.py): 384 px with drop-path 0.1; one ViT pass
over both images; the image-grounded encoder with a two-branch cross-attention (layers 0-5
average the branches, 6-11 merge them with a linear 1536 -> 768); the classifier on [ENC];
cross-entropy; AdamW lr 3e-5, wd 0.05, cosine stepped once per epoch (no warm-up) over 15
epochs, global batch 256 (the yaml's 16 per GPU on 16 GPUs); crop scale 0.5-1, flip,
RandAugment; the pair swap (images and left/right) with probability 0.5. Evaluated on dev after
every epoch; the best dev model is kept (WORKDIR/model_best) and scored on test-P.

    python -m blip_jax.data.prepare --source blip_nlvr --data_dir DATA --name blip_nlvr \
        --annotations train=nlvr_train.json val=nlvr_dev.json test=nlvr_test.json \
        --image_root NLVR2_IMAGES
    python -m blip_jax.convert model_base.pth /ckpt/blip_base --image-size 384
    python -m blip_jax.train --config=configs/nlvr.py --workdir=DIR \
        --config.data.data_dir=DATA --config.init_checkpoint=/ckpt/blip_base
    python -m blip_jax.evaluate --config=configs/nlvr.py --checkpoint=DIR/model_best \
        --config.data.data_dir=DATA --split=test

The released fine-tuned model (model_base_nlvr.pth) converts directly:
`python -m blip_jax.convert model_base_nlvr.pth /ckpt/blip_nlvr` then evaluate it as above.
"""

from blip_jax.train.defaults import base_config


def get_config():
    c = base_config("base", tie_encoder_decoder=False, itc_itm_heads=False, text_decoder=False,
                    image_pair=True, pair_merge_layer=6)
    c.task = "nlvr"
    c.model.vision.image_size = 384
    c.model.vision.drop_path_rate = 0.1
    c.data.prepare_synthetic = False
    c.data.train_sources = [("blip_nlvr", "train")]
    c.data.eval_source = ("blip_nlvr", "val")
    c.data.max_words = 40  # pre_caption(sentence, 40)
    c.data.max_tokens = 40
    c.data.crop_scale = (0.5, 1.0)
    c.data.randaugment = True
    c.data.flip = "plain"
    c.data.nlvr_swap = True
    c.data.workers = 8
    c.batch_size = 256
    c.num_epochs = 15
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.optim.schedule = "cosine_epoch"
    c.optim.lr = 3e-5
    c.optim.warmup_steps = 0
    c.optim.min_lr = 0.0
    c.optim.weight_decay = 0.05
    c.loss.itc_weight = 0.0
    c.loss.itm_weight = 0.0
    c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
    c.eval.every_epochs = 1  # the original evaluates dev (and test) after every epoch
    c.eval.keep_best = "accuracy"  # ... and keeps checkpoint_best.pth by dev accuracy
    c.eval.max_images = 0
    c.eval.batch_size = 64
    return c
