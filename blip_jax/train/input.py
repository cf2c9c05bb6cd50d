"""What the trainer reads: the configured training sources as a grain loader of this
process's shard, and the optional zero-shot evaluation hook."""

from __future__ import annotations

import os
from typing import Callable

import jax
import ml_collections
from jax.experimental import multihost_utils

from blip_jax.data import pipeline, prepare
from blip_jax.evaluation import tasks

SYNTHETIC = "synthetic"  # config alias for the built-in synthetic dataset of config.data
SYNTHETIC_VQA = "synthetic_vqa"  # ... and for the built-in synthetic VQA task
SYNTHETIC_NLVR = "synthetic_nlvr"  # ... and for the built-in synthetic two-image (NLVR2) task
# ... and for the built-in synthetic video set: one dataset (clips with captions and questions)
# behind both names, video retrieval reading its captions and video QA its questions.
SYNTHETIC_VIDEO = "synthetic_video"
SYNTHETIC_VIDEOQA = "synthetic_videoqa"


def data_dir(config: ml_collections.ConfigDict) -> str:
    return os.path.abspath(os.path.expanduser(config.data.data_dir))


def _synthetic_vqa_kwargs(data: ml_collections.ConfigDict) -> dict:
    return dict(num_images=data.synthetic_num_images,
                eval_images=data.synthetic_eval_images or None,
                questions_per_image=data.synthetic_vqa_questions_per_image,
                seed=data.synthetic_seed)


def _names(text: str) -> tuple[str, ...]:
    """'a, b,c' -> ('a', 'b', 'c')."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _synthetic_nlvr_kwargs(data: ml_collections.ConfigDict) -> dict:
    return dict(num_images=data.synthetic_num_images,
                eval_images=data.synthetic_eval_images or None,
                statements_per_pair=data.synthetic_nlvr_statements_per_pair,
                templates=_names(data.synthetic_nlvr_templates),
                descriptions=_names(data.synthetic_nlvr_descriptions),
                seed=data.synthetic_seed)


def _synthetic_video_kwargs(data: ml_collections.ConfigDict) -> dict:
    return dict(clips=data.synthetic_video_clips, frames=data.synthetic_video_frames,
                captions_per_clip=data.synthetic_video_captions,
                questions_per_clip=data.synthetic_video_questions, seed=data.synthetic_seed)


def _ensure(config: ml_collections.ConfigDict, name_fn, ensure_fn, kwargs: dict) -> str:
    """The dataset name, writing it first if absent and config.data.prepare_synthetic is set
    (process 0 writes, the others wait)."""
    if not config.data.prepare_synthetic:
        return name_fn(**kwargs)
    if jax.process_index() == 0:
        name = ensure_fn(data_dir(config), **kwargs)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("blip_jax_synthetic_ready")
        if jax.process_index() != 0:
            name = ensure_fn(data_dir(config), **kwargs)
    return name


def synthetic_name(config: ml_collections.ConfigDict) -> str:
    """TFDS name of the configured synthetic dataset (written on first use, see _ensure)."""
    return _ensure(config, prepare.synthetic_dataset_name, prepare.ensure_synthetic,
                   prepare.synthetic_kwargs(config.data))


def resolve(config: ml_collections.ConfigDict, name: str) -> str:
    if name == SYNTHETIC:
        return synthetic_name(config)
    if name == SYNTHETIC_VQA:
        return _ensure(config, prepare.synthetic_vqa_dataset_name, prepare.ensure_synthetic_vqa,
                       _synthetic_vqa_kwargs(config.data))
    if name == SYNTHETIC_NLVR:
        return _ensure(config, prepare.synthetic_nlvr_dataset_name, prepare.ensure_synthetic_nlvr,
                       _synthetic_nlvr_kwargs(config.data))
    if name in (SYNTHETIC_VIDEO, SYNTHETIC_VIDEOQA):
        return _ensure(config, prepare.synthetic_video_dataset_name, prepare.ensure_synthetic_video,
                       _synthetic_video_kwargs(config.data))
    return name


class TrainData:
    """The training sources of `config` for this process (per-process batch = global / processes):
    image-text pairs, questions with weighted answers for task vqa, or image pairs with a
    true/false sentence for task nlvr."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.sources = [(resolve(config, name), split) for name, split in config.data.train_sources]
        d = config.data
        common = dict(global_batch_size=config.batch_size,
                      image_size=config.model.vision.image_size, seed=config.seed,
                      shard_index=jax.process_index(), shard_count=jax.process_count(),
                      worker_count=d.workers, scale=tuple(d.crop_scale), randaug=d.randaugment,
                      flip=d.flip)
        if config.task == "vqa":
            from blip_jax.data import vqa_pipeline  # the VQA data stack loads only for VQA
            self.loader = vqa_pipeline.make_vqa_train_loader(
                data_dir(config), self.sources, max_question_words=d.max_question_words,
                max_question_tokens=d.max_question_tokens, max_answers=d.max_answers,
                max_answer_tokens=d.max_answer_tokens, vg_answer_weight=d.vg_answer_weight,
                **common)
        elif config.task == "nlvr":
            from blip_jax.data import nlvr_pipeline  # the NLVR data stack loads only for NLVR
            self.loader = nlvr_pipeline.make_nlvr_train_loader(
                data_dir(config), self.sources, max_words=d.max_words, max_tokens=d.max_tokens,
                swap=d.nlvr_swap, **common)
        else:
            self.loader = pipeline.make_train_loader(
                data_dir(config), self.sources, max_words=d.max_words, max_tokens=d.max_tokens,
                prompt=config.loss.prompt, **common)

    @property
    def num_examples(self) -> int:
        """Training pairs per epoch (all processes together)."""
        return self.loader.num_records

    def iterator(self) -> pipeline.TrainIterator:
        return iter(self.loader)


def make_evaluator(config: ml_collections.ConfigDict, setup,
                   output_dir: str | None = None) -> Callable[[dict], dict]:
    """config.task's evaluation (blip_jax.evaluation.tasks) on config.data.eval_source; the
    split is loaded once."""
    name, split = config.data.eval_source
    data = tasks.load_eval_data(config, data_dir(config), resolve(config, name), split)

    def evaluate(params) -> dict:
        if jax.process_count() > 1:  # every process evaluates on the whole tree
            params = multihost_utils.process_allgather(params, tiled=True)
        r = tasks.evaluate(config, setup.model, params, data, mesh=setup.mesh,
                           output_dir=output_dir)
        return {f"eval/{k}": v for k, v in r.items() if isinstance(v, (int, float))}

    return evaluate
