"""VQA v2 fine-tune of a pre-trained ViT-B BLIP, the paper's recipe (REFERENCE §4; the
original's configs/vqa.yaml and train_vqa.py): 480 px with drop-path 0.1, the question through
the image-grounded encoder, a separate answer decoder on the question states; the weighted
answer loss (VQA: count / 10 per unique answer; VG QA: 0.2); AdamW lr 2e-5, wd 0.05, cosine
stepped once per epoch (no warm-up) over 10 epochs, global batch 256; crop scale 0.5-1, flip,
RandAugment; train = VQA v2 train + val + Visual Genome QA. Inference: rank the 3,128-answer
list (first-token top 128 re-scored by sequence likelihood).

    python -m blip_jax.data.prepare --source blip_vqa --data_dir DATA --name blip_vqa \
        --annotations train=vqa_train.json,vqa_val.json,vg_qa.json test=vqa_test.json \
        --image_root COCO_IMAGES --vg_image_root VG_IMAGES --answer_list answer_list.json
    python -m blip_jax.convert model_base.pth /ckpt/blip_base --image-size 480
    python -m blip_jax.train --config=configs/vqa.py --workdir=DIR \
        --config.data.data_dir=DATA --config.init_checkpoint=/ckpt/blip_base
    python -m blip_jax.evaluate --config=configs/vqa.py --checkpoint=DIR/model \
        --config.data.data_dir=DATA --split=test

The test split has no answers: evaluation writes vqa_result_test.json for the VQA v2 server
(test-dev is what the paper reports). Scoring val after training on it inflates the number.
"""

from blip_jax.train.defaults import base_config

def get_config():
    c = base_config("base", tie_encoder_decoder=False, itc_itm_heads=False,
                    decoder_context="question")
    c.task = "vqa"
    c.model.vision.image_size = 480
    c.model.vision.drop_path_rate = 0.1
    c.data.prepare_synthetic = False
    c.data.train_sources = [("blip_vqa", "train")]
    c.data.eval_source = ("blip_vqa", "test")
    c.data.crop_scale = (0.5, 1.0)
    c.data.randaugment = True
    c.data.flip = "plain"
    c.data.workers = 8
    c.batch_size = 256
    c.num_epochs = 10  # epochs of the prepared train split (its size // batch_size steps each)
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.optim.schedule = "cosine_epoch"
    c.optim.lr = 2e-5
    c.optim.warmup_steps = 0
    c.optim.min_lr = 0.0
    c.optim.weight_decay = 0.05
    c.loss.itc_weight = 0.0
    c.loss.itm_weight = 0.0
    c.loss.lm_weight = 1.0
    c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
    c.eval.every_steps = 0  # the original evaluates once, after the last epoch
    c.eval.max_images = 0
    c.eval.batch_size = 32
    c.eval.vqa_inference = "rank"
    c.eval.k_test = 128
    c.eval.num_beams = 3
    c.eval.max_length = 10
    c.eval.min_length = 1
    return c
