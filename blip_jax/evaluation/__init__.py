"""Evaluation protocols: image-text retrieval (and captioning metrics)."""
