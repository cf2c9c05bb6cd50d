"""Evaluation protocols: image-text retrieval as in the BLIP paper (ITC shortlist + ITM re-rank)
and the COCO caption metrics."""

from blip_jax.evaluation.captioning import (caption_agnostic_baseline, caption_metrics,
                                            write_results)
from blip_jax.evaluation.retrieval import (evaluate_retrieval, retrieval_metrics,
                                           retrieval_scores, zero_shot_itc_recall)

__all__ = ["caption_agnostic_baseline", "caption_metrics", "write_results", "evaluate_retrieval",
           "retrieval_metrics", "retrieval_scores", "zero_shot_itc_recall"]
