"""Evaluate a model checkpoint (trained here or converted) the way a config says.

    python -m blip_jax.evaluate --config=configs/retrieval_coco.py --checkpoint=DIR \
        [--split=test] [--output=results.json] [--dtype=bfloat16] [--config.eval.k_test=128 ...]

config.task picks the protocol: retrieval / pretrain (TR/IR R@1/5/10; config.eval.itm_rerank
for the paper's ITM re-ranking of the top config.eval.k_test) or caption (COCO caption metrics
of beam-search captions, written next to the results) or vqa (VQA accuracy of ranked or
generated answers, written next to the results in the VQA server's format) or nlvr (accuracy)
or, zero-shot on video, video_retrieval (TR/VR R@1/5/10, median rank) and videoqa (as vqa,
over the frames). The model is the checkpoint's own
architecture in the variant the config trains (a pre-trained tied checkpoint evaluated with a
retrieval config is untied first) at the config's image size.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from absl import app, flags, logging
from ml_collections import config_flags

from blip_jax import cli, distributed
from blip_jax.train.defaults import check_keys

FLAGS = flags.FLAGS
distributed.define_flags()
config_flags.DEFINE_config_file("config", None, "Fine-tuning/evaluation config file.",
                                lock_config=False)
flags.DEFINE_string("checkpoint", None, "Model checkpoint directory (blip_jax.checkpoint format: "
                    "a training run's WORKDIR/model or a `blip_jax.convert` output).")
flags.DEFINE_string("split", None, "Split of config.data.eval_source's dataset (default: its own).")
flags.DEFINE_string("output", None, "Results JSON (default: CHECKPOINT/eval_TASK_SPLIT.json).")
flags.DEFINE_string("dtype", "float32", "Computation dtype: float32 or bfloat16 (the params cast "
                    "to bfloat16 once at load; softmax, LayerNorm statistics and logits stay "
                    "float32).")
flags.mark_flags_as_required(["config", "checkpoint"])


def run(config, checkpoint_dir: str, split: Optional[str] = None,
        output: Optional[str] = None, dtype: str = "float32") -> dict:
    """Evaluates `checkpoint_dir` under `config` in computation dtype `dtype` (float32 or
    bfloat16: inference.with_dtype); writes and returns the results."""
    import jax

    from blip_jax import checkpoint, parallel
    from blip_jax.evaluation import tasks
    from blip_jax.inference import check_dtype, with_dtype
    from blip_jax.models import variants
    from blip_jax.models.blip import Blip
    from blip_jax.models.config import BlipConfig
    from blip_jax.train import input as train_input
    from blip_jax.train.trainer import check_config_keys

    check_config_keys(config)
    check_dtype(dtype)
    source_cfg, params = checkpoint.load_model(checkpoint_dir)
    wanted = BlipConfig.from_dict(config.model.to_dict())
    if wanted.image_pair and not source_cfg.image_pair:
        raise ValueError(f"checkpoint {checkpoint_dir} is not an NLVR2 model (its classifier "
                         f"would be untrained): fine-tune it first with configs/nlvr*.py")
    model_cfg = source_cfg.replace(
        tie_encoder_decoder=wanted.tie_encoder_decoder, text_encoder=wanted.text_encoder,
        text_decoder=wanted.text_decoder, itc_itm_heads=wanted.itc_itm_heads,
        decoder_context=wanted.decoder_context, image_pair=wanted.image_pair,
        pair_merge_layer=wanted.pair_merge_layer if wanted.image_pair else source_cfg.pair_merge_layer,
        vision=dataclasses.replace(source_cfg.vision, image_size=wanted.vision.image_size))
    params = variants.adapt_params(params, source_cfg, model_cfg)
    checkpoint.check_params_fit(params, model_cfg, what=f"checkpoint {checkpoint_dir}")
    model_cfg, params = with_dtype(model_cfg, params, dtype)
    config = config.copy_and_resolve_references()
    config.model = model_cfg.to_dict()
    name, default_split = config.data.eval_source
    split = split or default_split
    data = tasks.load_eval_data(config, train_input.data_dir(config),
                                train_input.resolve(config, name), split)
    mesh = parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    out_dir = os.path.dirname(os.path.abspath(output)) if output else checkpoint_dir
    metrics = tasks.evaluate(config, Blip(model_cfg), params, data, mesh=mesh, output_dir=out_dir)
    results = {"task": config.task, "checkpoint": os.path.abspath(checkpoint_dir),
               "dataset": f"{name}:{split}", "dtype": dtype, "metrics": metrics}
    if isinstance(data, tasks.StreamedSplit):
        count = "num_questions" if config.task in ("vqa", "videoqa") else "num_examples"
        results[count] = metrics[count]
    elif config.task == "video_retrieval":
        results.update(num_videos=len(data.videos), num_texts=len(data.texts))
        if data.skipped:
            results["skipped_videos"] = [f"{where}: {why}" for where, why in data.skipped]
    else:
        results.update(num_images=len(data.images), num_texts=len(data.texts))
    if jax.process_index() == 0:
        path = output or os.path.join(checkpoint_dir, f"eval_{config.task}_{split}.json")
        tasks.write_json(path, results)
        print(format_table(results))
        print(f"results written to {path}", flush=True)
    return results


def format_table(results: dict) -> str:
    if "num_questions" in results:
        counted = f"{results['num_questions']} questions"
    elif "num_examples" in results:
        counted = f"{results['num_examples']} image pairs with a sentence"
    elif "num_videos" in results:
        counted = f"{results['num_videos']} videos, {results['num_texts']} texts"
    else:
        counted = f"{results['num_images']} images, {results['num_texts']} texts"
    lines = [f"{results['task']} evaluation of {results['checkpoint']} on {results['dataset']} "
             f"({counted})",
             f"{'metric':<24}{'value':>10}"]
    for k, v in results["metrics"].items():
        if isinstance(v, (int, float)):
            lines.append(f"{k:<24}{v:>10.4f}" if abs(v) < 10 else f"{k:<24}{v:>10.2f}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    distributed.initialize_from_flags()
    run(FLAGS.config, FLAGS.checkpoint, FLAGS.split, FLAGS.output, FLAGS.dtype)


if __name__ == "__main__":
    cli.run_absl(main, config_check=check_keys)
