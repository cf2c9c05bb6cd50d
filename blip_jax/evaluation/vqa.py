"""VQA evaluation: answer every question of a split (rank over the dataset's answer list, or
generate), write the results in the VQA v2 server format, and score VQA accuracy where the split
has annotator answers.

Note: the paper's numbers are test-dev scores from the evaluation server. Scoring `val` after
training on train + val (the original's recipe) measures memorisation and inflates the number;
score a split that training did not see.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from blip_jax import answering, decoding
from blip_jax.data import vqa_builders, vqa_pipeline
from blip_jax.evaluation import vqa_accuracy
from blip_jax.models.blip import Blip

INFERENCE = ("rank", "generate")


def answer_split(config: ml_collections.ConfigDict, model: Blip, params: Any, data_dir: str,
                 dataset_name: str, split: str) -> tuple[list[dict], list[str]]:
    """One record per answered question: {"question_id", "question", "answer", "tokens",
    "answers" (annotators'), "question_type"}; and the questions that could not be answered
    (unreadable images), named."""
    method = config.eval.vqa_inference
    if method not in INFERENCE:
        raise ValueError(f"config.eval.vqa_inference={method!r}: use one of {INFERENCE}")
    candidates = None
    if method == "rank":
        candidates = answering.AnswerCandidates.build(
            vqa_builders.load_answer_list(data_dir, dataset_name))
        cand_ids, cand_mask = jnp.asarray(candidates.ids), jnp.asarray(candidates.mask)
    options = dict(batch_size=config.eval.batch_size, image_size=config.model.vision.image_size,
                   max_question_words=config.data.max_question_words,
                   max_question_tokens=config.data.max_question_tokens)
    if config.task == "videoqa":  # zero-shot: each question's frames [B, F, S, S, 3] as its image
        from blip_jax.data import video_pipeline
        batches = video_pipeline.videoqa_eval_batches(
            data_dir, dataset_name, split, num_frames=config.data.num_frames,
            sampling=config.data.frame_sampling, **options)
    else:
        batches = vqa_pipeline.vqa_eval_batches(data_dir, dataset_name, split, **options)
    records, limit = [], config.eval.max_images
    for batch in batches:
        states = answering.encode_questions(model, params, jnp.asarray(batch["image"]),
                                            jnp.asarray(batch["question_ids"]),
                                            jnp.asarray(batch["question_mask"]))
        if method == "rank":
            best, _, _ = answering.rank_answers(model, params, states,
                                                jnp.asarray(batch["question_mask"]), cand_ids,
                                                cand_mask, k=config.eval.k_test)
            best = np.asarray(best)
            texts = [candidates.answers[i] for i in best]
            tokens = [candidates.tokens(i) for i in best]
        else:
            texts, toks = answering.generate_answers(
                model, params, states, batch["question_mask"], num_beams=config.eval.num_beams,
                max_length=config.eval.max_length, min_length=config.eval.min_length)
            tokens = decoding.caption_tokens_list(toks)
        for i in np.flatnonzero(batch["valid"]):
            records.append({"question_id": int(batch["question_id"][i]),
                            "question": str(batch["question"][i]), "answer": texts[i],
                            "tokens": tokens[i], "answers": list(batch["answers"][i]),
                            "question_type": str(batch["question_type"][i]),
                            "late_only": str(batch["late_only"][i]) if "late_only" in batch else ""})
        if limit and len(records) >= limit:
            records = records[:limit]
            break
    return records, [f"{where}: {why}" for where, why in getattr(batches, "skipped", [])]


def evaluate_vqa(config: ml_collections.ConfigDict, model: Blip, params: Any, data_dir: str,
                 dataset_name: str, split: str, output_dir: Optional[str] = None) -> dict:
    """Answers the split (config.eval.vqa_inference), writes `vqa_result_<split>.json` (the
    server's format) to `output_dir`, and returns VQA accuracy (overall and per question type)
    where the questions carry annotator answers."""
    records, skipped = answer_split(config, model, params, data_dir, dataset_name, split)
    out: dict[str, Any] = {"num_questions": len(records), "unanswered": len(skipped)}
    if skipped:
        out["unanswered_examples"] = skipped[:5]
    predictions = {r["question_id"]: r["answer"] for r in records}
    if output_dir and jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        vqa_accuracy.write_results(os.path.join(output_dir, f"vqa_result_{split}.json"),
                                   predictions)
    scored = [r for r in records if r["answers"]]
    if scored:
        acc = vqa_accuracy.evaluate({r["question_id"]: r["answer"] for r in scored},
                                    {r["question_id"]: r["answers"] for r in scored},
                                    {r["question_id"]: r["question_type"] or "all" for r in scored})
        out["vqa_accuracy"] = acc["overall"]
        out.update({f"vqa_accuracy/{t}": v for t, v in sorted(acc["per_type"].items())})
        # Video QA on the synthetic clips: questions the first frame alone cannot answer.
        for tag, name in (("yes", "late_only"), ("no", "not_late_only")):
            part = [r for r in scored if r["late_only"] == tag]
            if part:
                out[f"vqa_accuracy/{name}"] = vqa_accuracy.evaluate(
                    {r["question_id"]: r["answer"] for r in part},
                    {r["question_id"]: r["answers"] for r in part})["overall"]
                out[f"num_questions/{name}"] = len(part)
        # Answers that ignore the image, for reference: the split's most common answer, and
        # the most common answer of each question type (a language prior).
        out["majority_answer_accuracy"] = prior_accuracy(scored, by_type=False)
        out["type_prior_accuracy"] = prior_accuracy(scored, by_type=True)
    return out


def prior_accuracy(records: list[dict], by_type: bool) -> float:
    """VQA accuracy (percent) of answering every question with the most common normalised
    annotator answer of the split (by_type: of its question type), ties alphabetical. Both
    are computed on the scored split itself, so they are upper bounds of blind constants."""
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        group = counts.setdefault(r["question_type"] if by_type else "", {})
        for a in r["answers"]:
            a = vqa_accuracy.normalize_answer(a)
            group[a] = group.get(a, 0) + 1
    top = {g: max(sorted(c), key=c.__getitem__) for g, c in counts.items()}
    return float(np.mean([
        vqa_accuracy.question_accuracy(top[r["question_type"] if by_type else ""], r["answers"])
        for r in records])) * 100
