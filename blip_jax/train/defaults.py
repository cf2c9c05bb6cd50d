"""Defaults shared by every training config: each file under configs/ starts from
`base_config()` and changes what its task needs. Every key is documented here, once."""

import ml_collections

from blip_jax.models import config as model_config


def base_config(model_preset: str, **model_changes) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # pretrain | caption | retrieval (which losses, see config.loss) | vqa (the answer decoder's
    # weighted loss, blip_jax/train/vqa_step.py; needs model.decoder_context="question") | nlvr
    # (the image-pair classifier, blip_jax/train/nlvr_step.py; needs model.image_pair=True)
    c.task = "pretrain"
    c.model = model_config.preset(model_preset, **model_changes).to_dict()
    c.init_checkpoint = ""  # blip_jax checkpoint dir to start from ('' = random init)
    # Start from ImageNet / BERT weights as the paper's pre-training does (only with
    # init_checkpoint=''; both set is an error). Local paths, nothing is downloaded; what is
    # loaded and what stays random is printed (blip_jax/convert/pretrained_init.py). The run
    # keeps config.model's LayerNorm eps and says when the source's differs.
    c.init = ml_collections.ConfigDict()
    # HF ViT/DeiT dir, timm-layout .pth/.safetensors (DeiT's torch-hub file) or JAX ViT .npz.
    c.init.vit = ""
    # HF BERT dir (BertModel/BertForMaskedLM/...): text encoder, decoder self-attention, LM head.
    c.init.bert = ""

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = "data"
    # (dataset name, split) pairs concatenated for training.
    # A tuple, so that --config.data.train_sources="((NAME, SPLIT), ...)" overrides it (config_flags
    # cannot override lists); recipes may assign lists (ml_collections makes them tuples).
    c.data.train_sources = (("synthetic", "train_web"), ("synthetic", "train_clean"))
    c.data.eval_source = ("synthetic", "val")
    c.data.prepare_synthetic = True  # build the synthetic dataset on first use
    c.data.synthetic_num_images = 4000
    c.data.synthetic_noise_rate = 0.4       # train_web texts not true of their image
    c.data.synthetic_nondescript_rate = 0.0  # train_web texts true but nondescript
    c.data.synthetic_seed = 0
    c.data.synthetic_clean_images = 0  # train_clean images; 0 = synthetic_num_images // 5
    c.data.synthetic_eval_images = 0   # val / test images each; 0 = synthetic_num_images // 10
    c.data.max_words = 30
    c.data.max_tokens = 30
    # VQA (task vqa; blip_jax/data/vqa_pipeline.py). Questions: pre_question, at most
    # max_question_words words and max_question_tokens tokens (the original: 50 and 35).
    c.data.max_question_words = 50
    c.data.max_question_tokens = 35
    # Answers per question: each unique annotator answer with weight count / annotators (VQA),
    # or the one answer with vg_answer_weight (Visual Genome QA), in max_answers slots of
    # max_answer_tokens tokens (more or longer: the heaviest kept / truncated, with a warning).
    c.data.max_answers = 10
    c.data.max_answer_tokens = 16
    c.data.vg_answer_weight = 0.2
    c.data.synthetic_vqa_questions_per_image = 6  # the "synthetic_vqa" dataset alias
    c.data.synthetic_nlvr_statements_per_pair = 2  # the "synthetic_nlvr" alias (pairs: synthetic_num_images)
    # ... its statement templates and how they name shapes, comma-separated subsets of
    # synthetic_nlvr.TEMPLATES and DESC_TYPES (these defaults: all of them)
    c.data.synthetic_nlvr_templates = "side_has,side_count,count_compare,same_count,both,exactly_one,neither"
    c.data.synthetic_nlvr_descriptions = "color,kind,color_kind,size_kind"
    c.data.nlvr_swap = True  # task nlvr: swap the two images and the words left/right with p 0.5 (the original)
    # Video (zero-shot video retrieval and video QA; blip_jax/data/video_pipeline.py): frames read
    # per video (the original: 8 for MSRVTT retrieval; the paper's video QA: 16), squash-resized to
    # model.vision.image_size, and which: "uniform" (frame floor(i * n / F) of n, evenly over the
    # whole video) or "original" (BLIP's np.arange(0, n, n / F, dtype=int) = i * int(n / F), which
    # rounds the step down and can miss the end of the video; blip_jax/data/video.py).
    c.data.num_frames = 8
    c.data.frame_sampling = "uniform"
    # The built-in synthetic video set behind the aliases "synthetic_video" (retrieval: its
    # captions) and "synthetic_videoqa" (QA: its questions), one dataset with splits val and test
    # (blip_jax/data/synthetic_video.py; seed: synthetic_seed).
    c.data.synthetic_video_clips = 100  # clips in val and in test each
    c.data.synthetic_video_frames = 16  # frames per clip, at 8 fps
    c.data.synthetic_video_captions = 1  # captions per clip (MSRVTT 1k-A: 1 per video)
    c.data.synthetic_video_questions = 3  # questions per clip (10 annotator answers each)
    c.data.crop_scale = (0.2, 1.0)
    c.data.randaugment = True
    # Horizontal flip: "plain" mirrors the image only (the original); "swap" also swaps the words
    # left/right in the caption so that relations stay true (the synthetic data's relations need
    # it; the tiny recipes use it); "none" never flips.
    c.data.flip = "plain"
    c.data.workers = 2

    c.total_steps = 1000
    c.batch_size = 32  # global, over all processes and devices
    c.steps_per_epoch = 0  # 0 = dataset size // batch_size
    c.num_epochs = 0  # > 0: total_steps = num_epochs * steps_per_epoch (known once data is read)
    c.log_every_steps = 10
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 3
    c.seed = 0
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    c.optim = ml_collections.ConfigDict()
    # step: the paper's pre-training (warm-up, then max(min_lr, lr * decay_rate^epoch));
    # cosine_epoch: the original's fine-tuning (utils.cosine_lr_schedule once per epoch: constant
    #   within an epoch, epochs = ceil(total_steps / steps_per_epoch), never reaches min_lr;
    #   no warm-up: needs warmup_steps=0); cosine: optax per-step warm-up + cosine to min_lr.
    c.optim.schedule = "step"
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
    # The momentum encoders run with dropout / drop-path, as in the original (its momentum
    # copies are submodules of a model in train mode); False = deterministic momentum features.
    c.loss.momentum_train_mode = True
    c.loss.queue_size = 57600
    c.loss.label_smoothing = 0.1
    c.loss.itm_negatives = "global"  # global batch | local (per data shard, as the original)
    # ITM hard negatives are drawn with weights softmax(sim[:, :B]) + itm_negative_floor, the
    # positive (same-id) pairs set to 0. sim is online x momentum features ("momentum": the
    # original's pre-training, models/blip_pretrain.py, floor 1e-4) or online x online
    # ("online": its retrieval fine-tuning, models/blip_retrieval.py, floor 0.0).
    c.loss.itm_negative_sim = "momentum"
    c.loss.itm_negative_floor = 1e-4
    # ITC in-batch columns: 1 = every row sees the whole global batch (+ the queue), which does
    # not depend on the device count; N = the batch is split into N contiguous groups and each
    # row sees only its own group's momentum features (+ the queue) as in-batch columns and
    # distillation targets: the original run on N GPUs. batch_size must divide by it.
    c.loss.itc_batch_groups = 1
    c.loss.use_image_ids = False
    c.loss.prompt = ""  # captioning prompt; its tokens are excluded from the LM loss
    c.loss.grad_accum_steps = 1
    # The captioning (LM) loss in chunks of about this many tokens of the batch
    # (losses.chunked_lm_loss: max(1, N // rows) text positions of every row per chunk), from
    # the decoder's states before the vocabulary projection, never holding the [B, L, vocab]
    # float32 logits; the same loss and gradients up to float32 summation order. 0 = the
    # materialised logits and losses.lm_loss. 128: the tiny pre-training step runs 2x faster
    # on CPU, base is unchanged (benchmarks/results/train_step_lm_chunk.json).
    c.loss.lm_chunk_tokens = 128

    # Evaluation on data.eval_source (during training every eval.every_steps, and by
    # `python -m blip_jax.evaluate`): retrieval for task pretrain/retrieval, COCO caption
    # metrics for task caption, VQA accuracy for vqa, accuracy for nlvr.
    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 0  # 0 = no evaluation during training
    c.eval.every_epochs = 0  # > 0: evaluate every N epochs instead (sets every_steps)
    # Model selection: a metric of the evaluation (e.g. "accuracy"): whenever it beats every
    # earlier evaluation, the model is also written to WORKDIR/model_best (with best.json: step
    # and value), the original's checkpoint_best.pth. "" = off.
    c.eval.keep_best = ""
    c.eval.max_images = 500  # first N images of the split (0 = all)
    c.eval.batch_size = 64
    c.eval.itm_rerank = False  # retrieval: False = ITC cosine only; True = the paper's protocol
    c.eval.k_test = 256  # ITM re-ranks each query's top k (paper: COCO 256, Flickr 128)
    # retrieval re-rank (images and videos): texts sharing one image's cross-attention
    # keys/values (1 = recomputed for every pair, as the original; evaluation/retrieval.py)
    c.eval.texts_per_group = 16
    c.eval.num_beams = 3  # captioning: beam search (1 = greedy) ...
    c.eval.top_p = 0.0  # ... or nucleus sampling when > 0
    c.eval.max_length = 20  # tokens, [DEC] and the prompt included (as the original counts)
    c.eval.min_length = 5
    c.eval.repetition_penalty = 1.0
    # Beam search length normalisation: "original" (sum logprob / whole length, [DEC] and
    # prompt included: the original BLIP's transformers 4) | "generated" (transformers 5)
    c.eval.length_norm = "original"
    # VQA: "rank" (the paper's: the answer list re-ranked, eval.k_test candidates by their
    # sequence likelihood) or "generate" (beam search with eval.num_beams / max_length /
    # min_length; the original's 3 / 10 / 1).
    c.eval.vqa_inference = "rank"
    c.eval.spice = False  # SPICE needs Stanford CoreNLP models (downloaded on first use)
    return c


def check_keys(config: ml_collections.ConfigDict) -> None:
    """Every key check of a training/evaluation config, each error naming the valid keys: the
    trainer's (every level but the model) and the model's. The commands run it before any
    work, so a typo in the model keys does not first wait for the data to be written."""
    from blip_jax.train.trainer import check_config_keys  # lazy: trainer imports this module

    check_config_keys(config)
    model_config.BlipConfig.from_dict(config.model.to_dict())
