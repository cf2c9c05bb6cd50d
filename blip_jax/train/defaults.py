"""Defaults shared by every training config: each file under configs/ starts from
`base_config()` and changes what its task needs. Every key is documented here, once."""

import ml_collections

from blip_jax.models import config as model_config


def base_config(model_preset: str, **model_changes) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "pretrain"  # pretrain | caption | retrieval (which losses, see config.loss)
    c.model = model_config.preset(model_preset, **model_changes).to_dict()
    c.init_checkpoint = ""  # blip_jax checkpoint dir to start from ('' = random init)

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = "data"
    # (dataset name, split) pairs concatenated for training.
    c.data.train_sources = [("synthetic", "train_web"), ("synthetic", "train_clean")]
    c.data.eval_source = ("synthetic", "val")
    c.data.prepare_synthetic = True  # build the synthetic dataset on first use
    c.data.synthetic_num_images = 4000
    c.data.synthetic_noise_rate = 0.4
    c.data.synthetic_seed = 0
    c.data.max_words = 30
    c.data.max_tokens = 30
    c.data.crop_scale = (0.2, 1.0)
    c.data.randaugment = True
    c.data.hflip = True
    c.data.workers = 2

    c.total_steps = 1000
    c.batch_size = 32  # global, over all processes and devices
    c.steps_per_epoch = 0  # 0 = dataset size // batch_size
    c.log_every_steps = 10
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 3
    c.seed = 0
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    c.optim = ml_collections.ConfigDict()
    c.optim.schedule = "step"  # step (paper: warm-up then per-epoch decay) | cosine
    c.optim.lr = 3e-4
    c.optim.warmup_lr = 1e-6
    c.optim.warmup_steps = 3000
    c.optim.min_lr = 1e-6
    c.optim.decay_rate = 0.9
    c.optim.weight_decay = 0.05
    c.optim.weight_decay_mask = "all"  # all (original) | matrices (LAVIS: no biases/norms)
    c.optim.grad_clip_norm = 0.0  # 0 = off
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999

    c.loss = ml_collections.ConfigDict()
    c.loss.itc_weight = 1.0
    c.loss.itm_weight = 1.0
    c.loss.lm_weight = 1.0
    c.loss.alpha = 0.4
    c.loss.alpha_ramp_epochs = 2.0
    c.loss.momentum = 0.995
    c.loss.queue_size = 57600
    c.loss.label_smoothing = 0.1
    c.loss.itm_negatives = "global"  # global batch | local (per data shard, as the original)
    c.loss.use_image_ids = False
    c.loss.prompt = ""  # captioning prompt; its tokens are excluded from the LM loss
    c.loss.grad_accum_steps = 1

    # Evaluation on data.eval_source (during training every eval.every_steps, and by
    # `python -m blip_jax.evaluate`): retrieval for task pretrain/retrieval, COCO caption
    # metrics for task caption.
    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 0  # 0 = no evaluation during training
    c.eval.max_images = 500  # first N images of the split (0 = all)
    c.eval.batch_size = 64
    c.eval.itm_rerank = False  # retrieval: False = ITC cosine only; True = the paper's protocol
    c.eval.k_test = 256  # ITM re-ranks each query's top k (paper: COCO 256, Flickr 128)
    c.eval.num_beams = 3  # captioning: beam search (1 = greedy) ...
    c.eval.top_p = 0.0  # ... or nucleus sampling when > 0
    c.eval.max_length = 20  # tokens, [DEC] and the prompt included (as the original counts)
    c.eval.min_length = 5
    c.eval.repetition_penalty = 1.0
    c.eval.spice = False  # SPICE needs Stanford CoreNLP models (downloaded on first use)
    return c
