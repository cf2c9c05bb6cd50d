"""Every CapFilt setting, documented once; configs/capfilt.py starts from `default_config()`."""

from __future__ import annotations

import ml_collections

# What a result depends on: a restart must use the same values (per_device_batch, workers, the
# device count and the process count are free to change, results do not depend on them; nor do
# output_format and webdataset_dir: rerun a finished job with another to add that output).
# dtype is one too, recorded only when it is not float32 (job.py), so that a workdir started
# before the key existed resumes.
RESULT_KEYS = ("data_dir", "sources", "synthetic_num_images", "synthetic_noise_rate",
               "synthetic_nondescript_rate", "synthetic_seed", "synthetic_clean_images",
               "synthetic_eval_images", "decoding", "num_beams", "captioner_checkpoint", "filter_checkpoint", "num_captions",
               "top_p", "top_k", "temperature", "repetition_penalty", "prompt", "min_length", "max_length",
               "threshold", "seed", "records_per_shard", "max_words", "max_tokens",
               "output_name", "output_data_dir")


OUTPUT_FORMATS = ("array_record", "webdataset", "both")


class CapFiltConfigError(ValueError):
    """A CapFilt setting that is unknown or out of range."""


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # -- input: the web image-text data to bootstrap ------------------------------------------------
    c.data_dir = "data"  # TFDS data dir holding the sources (and, by default, the output dataset)
    # (dataset name, split) pairs, read in this order; "synthetic" names the built-in synthetic data
    # described by the synthetic_* keys (it must already be written, e.g. by the trainer).
    c.sources = [("synthetic", "train_web")]
    c.synthetic_num_images = 4000
    c.synthetic_noise_rate = 0.4
    c.synthetic_nondescript_rate = 0.0
    c.synthetic_seed = 0
    c.synthetic_clean_images = 0  # 0 = the default fraction (as the trainer's data.synthetic_*)
    c.synthetic_eval_images = 0
    c.max_words = 30   # pre_caption word limit for web and synthetic texts (as pre-training data)
    c.max_tokens = 35  # filter text length in tokens, [ENC] and [SEP] included
    c.workers = 0      # grain worker processes decoding images (0: in the main process)

    # -- models: two separate checkpoints (sharing them hurt in the paper) --------------------------
    c.captioner_checkpoint = ""  # blip_jax checkpoint dir with a text decoder
    c.filter_checkpoint = ""     # blip_jax checkpoint dir with a text encoder and the ITM head
    # Computation dtype of both models: "float32" or "bfloat16" (params cast to bfloat16 once at
    # load; attention softmax, LayerNorm statistics and the logits stay float32).
    c.dtype = "float32"

    # -- captioning: nucleus sampling as in the original CapFilt ------------------------------------
    # "nucleus" (the paper's CapFilt) or "beam" (num_beams, the paper's Table 2 comparison: one
    # caption per image, the most likely, less diverse); repetition_penalty, min/max_length and
    # the prompt apply to both, top_p/top_k/temperature/seed to nucleus only.
    c.decoding = "nucleus"
    c.num_beams = 3
    c.num_captions = 1           # synthetic captions per image (beam: must be 1)
    c.top_p = 0.9
    # The original sampled with transformers 4.15's generate, which also applies its default
    # top-k 50 before top-p; 0 = top-p alone.
    c.top_k = 50
    c.temperature = 1.0
    c.repetition_penalty = 1.1
    c.prompt = "a picture of "   # decoder prompt; stripped from the stored captions
    c.min_length = 5             # in tokens, the [DEC] + prompt prefix included
    c.max_length = 20            # in tokens, the [DEC] + prompt prefix included

    # -- filtering ----------------------------------------------------------------------------------
    c.threshold = 0.5            # keep a text whose ITM match probability is >= this

    # -- execution ----------------------------------------------------------------------------------
    c.per_device_batch = 16      # images per device per step
    c.seed = 0                   # sampling rng: key(seed) folded with record index and sample number
    # Input records per unit: units are consecutive records, one result file each (and one
    # webdataset shard), the unit of work, of resumption and of the division among processes.
    c.records_per_shard = 1024

    # -- output ---------------------------------------------------------------------------------------
    # The bootstrapped TFDS dataset is written as blip_capfilt/<output_name> into output_data_dir
    # ('' = data_dir, so that it can be mixed with the source's other splits for pre-training).
    c.output_name = "bootstrapped"
    c.output_data_dir = ""
    # "array_record" (the TFDS dataset above), "webdataset" (tar shards as img2dataset writes them,
    # one sample per kept pair: blip_jax/capfilt/webdataset_output.py) or "both".
    c.output_format = "array_record"
    c.webdataset_dir = ""  # where the tar shards go ('' = WORKDIR/webdataset)
    return c


def check_config(config: ml_collections.ConfigDict) -> None:
    """Rejects unknown keys and values out of range, naming the key and what it accepts."""
    known = default_config()
    unknown = sorted(set(config.keys()) - set(known.keys()))
    if unknown:
        raise CapFiltConfigError(f"unknown CapFilt config key(s) {unknown}; valid keys: "
                                 f"{sorted(known.keys())} (see blip_jax/capfilt/defaults.py)")
    checks = [
        (bool(config.captioner_checkpoint), "captioner_checkpoint is empty: give a checkpoint dir "
                                            "with a text decoder"),
        (bool(config.filter_checkpoint), "filter_checkpoint is empty: give a checkpoint dir with "
                                         "a text encoder and the ITM head"),
        (config.num_captions >= 1, f"num_captions={config.num_captions}: must be >= 1"),
        (config.decoding in ("nucleus", "beam"), f"decoding={config.decoding!r}: must be "
                                                 "'nucleus' or 'beam'"),
        (config.decoding != "beam" or (config.num_captions == 1 and config.num_beams >= 1),
         f"decoding='beam' gives one caption per image: num_captions must be 1 (got "
         f"{config.num_captions}) and num_beams >= 1 (got {config.num_beams})"),
        (0.0 < config.top_p <= 1.0, f"top_p={config.top_p}: must be in (0, 1]"),
        (config.top_k >= 0, f"top_k={config.top_k}: must be >= 0 (0 = off)"),
        (config.temperature > 0, f"temperature={config.temperature}: must be > 0"),
        (config.repetition_penalty > 0, f"repetition_penalty={config.repetition_penalty}: "
                                        "must be > 0 (1.0 = off)"),
        (0.0 <= config.threshold <= 1.0, f"threshold={config.threshold}: must be in [0, 1]"),
        (0 <= config.min_length <= config.max_length,
         f"min_length={config.min_length}, max_length={config.max_length}: need 0 <= min <= max"),
        (config.per_device_batch >= 1, f"per_device_batch={config.per_device_batch}: must be >= 1"),
        (config.records_per_shard >= 1, f"records_per_shard={config.records_per_shard}: "
                                        "must be >= 1"),
        (config.max_tokens >= 3, f"max_tokens={config.max_tokens}: must be >= 3"),
        (config.dtype in ("float32", "bfloat16"), f"dtype={config.dtype!r}: must be 'float32' "
                                                  "or 'bfloat16'"),
        (len(config.sources) > 0, "sources is empty: give [(dataset name, split), ...]"),
        (config.output_format in OUTPUT_FORMATS, f"output_format={config.output_format!r}: must be "
                                                 f"one of {', '.join(map(repr, OUTPUT_FORMATS))}"),
    ]
    for ok, message in checks:
        if not ok:
            raise CapFiltConfigError(message)
