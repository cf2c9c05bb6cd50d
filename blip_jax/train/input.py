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


def data_dir(config: ml_collections.ConfigDict) -> str:
    return os.path.abspath(os.path.expanduser(config.data.data_dir))


def synthetic_name(config: ml_collections.ConfigDict) -> str:
    """TFDS name of the configured synthetic dataset, writing it first if it is absent and
    config.data.prepare_synthetic is set (process 0 writes, the others wait)."""
    kwargs = prepare.synthetic_kwargs(config.data)
    if not config.data.prepare_synthetic:
        return prepare.synthetic_dataset_name(**kwargs)
    if jax.process_index() == 0:
        name = prepare.ensure_synthetic(data_dir(config), **kwargs)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("blip_jax_synthetic_ready")
        if jax.process_index() != 0:
            name = prepare.ensure_synthetic(data_dir(config), **kwargs)
    return name


def resolve(config: ml_collections.ConfigDict, name: str) -> str:
    return synthetic_name(config) if name == SYNTHETIC else name


class TrainData:
    """The training sources of `config` for this process (per-process batch = global / processes)."""

    def __init__(self, config: ml_collections.ConfigDict):
        sources = [(resolve(config, name), split) for name, split in config.data.train_sources]
        self.loader = pipeline.make_train_loader(
            data_dir(config), sources, global_batch_size=config.batch_size,
            image_size=config.model.vision.image_size, max_words=config.data.max_words,
            max_tokens=config.data.max_tokens, seed=config.seed,
            shard_index=jax.process_index(), shard_count=jax.process_count(),
            worker_count=config.data.workers, scale=tuple(config.data.crop_scale),
            randaug=config.data.randaugment, flip=config.data.flip,
            prompt=config.loss.prompt)

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
