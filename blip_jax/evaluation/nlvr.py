"""NLVR2 evaluation: classify every (image pair, sentence) of a split, write the predictions and
score accuracy (NLVR2's metric; the paper reports dev and test-P) and, where identifiers follow
NLVR2's `split-set-pair-sentence` form, consistency (the share of sentences whose every image
pair is classified right, the dataset's second metric).

Unlike the original (data/nlvr_dataset.py, shared by its dev/test loaders), evaluation never
swaps the two images: the swap is a training augmentation (docs/fidelity.md).
"""

from __future__ import annotations

import collections
import functools
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from blip_jax import tokenizer as tok
from blip_jax.models.blip import Blip


@functools.partial(jax.jit, static_argnums=0)
def pair_logits(model: Blip, params: Any, images: jax.Array, ids: jax.Array,
                mask: jax.Array) -> jax.Array:
    """images [B, 2, H, W, 3], ids / mask [B, L] ([CLS] or [ENC] first) -> logits [B, 2]."""
    def run(m: Blip):
        pair = m.pair_image_features(images)
        return m.pair_logits(ids.at[:, 0].set(tok.ENC_ID), mask, pair)
    return model.apply({"params": params}, method=run)


def classify_split(config: ml_collections.ConfigDict, model: Blip, params: Any, data_dir: str,
                   dataset_name: str, split: str) -> tuple[list[dict], list[str]]:
    """One record per classified example: {"identifier", "sentence", "label", "prediction",
    "prob_true"}; and the examples that could not be classified (unreadable images), named.
    config.eval.max_images > 0 caps the examples."""
    from blip_jax.data import nlvr_pipeline  # the NLVR data stack loads only for this task

    batches = nlvr_pipeline.nlvr_eval_batches(
        data_dir, dataset_name, split, batch_size=config.eval.batch_size,
        image_size=config.model.vision.image_size, max_words=config.data.max_words,
        max_tokens=config.data.max_tokens)
    records, limit = [], config.eval.max_images
    for batch in batches:
        logits = np.asarray(pair_logits(model, params, jnp.asarray(batch["images"]),
                                        jnp.asarray(batch["ids"]), jnp.asarray(batch["mask"])))
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs = probs[:, 1] / probs.sum(-1)
        for i in np.flatnonzero(batch["valid"]):
            records.append({"identifier": str(batch["identifier"][i]),
                            "sentence": str(batch["sentence"][i]), "label": int(batch["label"][i]),
                            "prediction": int(logits[i].argmax()), "prob_true": float(probs[i])})
        if limit and len(records) >= limit:
            records = records[:limit]
            break
    return records, [f"{where}: {why}" for where, why in getattr(batches, "skipped", [])]


def consistency(records: list[dict]) -> Optional[float]:
    """Percent of sentences all of whose image pairs are right; None unless every identifier
    has NLVR2's four parts (split-set-pair-sentence: a sentence is split-set-sentence)."""
    groups: dict[str, bool] = collections.defaultdict(lambda: True)
    for r in records:
        parts = r["identifier"].split("-")
        if len(parts) != 4:
            return None
        key = "-".join(parts[:2] + parts[3:])
        groups[key] &= r["prediction"] == r["label"]
    return 100.0 * float(np.mean(list(groups.values()))) if groups else None


def evaluate_nlvr(config: ml_collections.ConfigDict, model: Blip, params: Any, data_dir: str,
                  dataset_name: str, split: str, output_dir: Optional[str] = None) -> dict:
    """Classifies the split, writes `nlvr_result_<split>.json` (one record per example) to
    `output_dir`, returns accuracy (percent), consistency where defined, the majority-label
    accuracy of the split (what ignoring the images and the sentence scores) and counts."""
    records, skipped = classify_split(config, model, params, data_dir, dataset_name, split)
    out: dict[str, Any] = {"num_examples": len(records), "unclassified": len(skipped)}
    if skipped:
        out["unclassified_examples"] = skipped[:5]
    if output_dir and jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, f"nlvr_result_{split}.json"), "w") as f:
            json.dump(records, f)
    if records:
        labels = np.array([r["label"] for r in records])
        right = np.array([r["prediction"] == r["label"] for r in records])
        out["accuracy"] = 100.0 * float(right.mean())
        out["majority_label_accuracy"] = 100.0 * float(max(labels.mean(), 1 - labels.mean()))
        c = consistency(records)
        if c is not None:
            out["consistency"] = c
        out.update(accuracy_by_template(records))
    return out


def accuracy_by_template(records: list[dict]) -> dict[str, float]:
    """{"accuracy_<template>": percent} when every sentence is one of the synthetic task's
    statements (blip_jax/data/synthetic_nlvr.py), else {}: which kinds of statement a model
    gets right (the tiny model reads colours in either image, not counts)."""
    from blip_jax.data import synthetic_nlvr

    by_template: dict[str, list[bool]] = collections.defaultdict(list)
    for r in records:
        claim = synthetic_nlvr.parse_statement(r["sentence"])
        if claim is None:
            return {}
        by_template[claim.template].append(r["prediction"] == r["label"])
    return {f"accuracy_{t}": 100.0 * float(np.mean(v)) for t, v in sorted(by_template.items())}
