"""Evaluation protocols: image-text retrieval as in the BLIP paper (ITC shortlist + ITM re-rank)
the COCO caption metrics, and VQA accuracy (vqa_accuracy: the official tool's; vqa: answering
a split and scoring it)."""

from blip_jax.evaluation.captioning import (caption_agnostic_baseline, caption_metrics,
                                            write_results)
from blip_jax.evaluation.retrieval import (evaluate_retrieval, retrieval_metrics,
                                           retrieval_scores, zero_shot_itc_recall)

__all__ = ["caption_agnostic_baseline", "caption_metrics", "write_results", "evaluate_retrieval",
           "retrieval_metrics", "retrieval_scores", "zero_shot_itc_recall"]
