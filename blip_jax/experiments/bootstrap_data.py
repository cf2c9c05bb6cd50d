"""The bootstrap experiment's data: the pre-training set of each condition (docs/bootstrap.md)
built from one CapFilt run's results, the oracle set, and the quality of the synthetic captions
measured against the scenes' ground truth.

Every condition set is written in CapFilt's output layout (blip_jax/capfilt/dataset.py), so a
pre-training reads it as `[(name, "train"), ("synthetic", "train_clean")]` like CapFilt's own
output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from blip_jax.data import synthetic

Pair = tuple[int, str, str, float]  # (record index in train_web, text, origin, filter score)


def filter_only_pairs(records: Sequence[Mapping[str, Any]]) -> list[Pair]:
    """+F: the web texts the filter kept; no synthetic caption."""
    return [(r["index"], r["web"]["caption"], "web", r["web"]["score"])
            for r in records if r["valid"] and r["web"]["kept"]]


def caption_only_pairs(records: Sequence[Mapping[str, Any]]) -> list[Pair]:
    """+C: every web text and every synthetic caption, nothing filtered."""
    pairs: list[Pair] = []
    for r in records:
        if not r["valid"]:
            continue
        pairs.append((r["index"], r["web"]["caption"], "web", r["web"]["score"]))
        pairs += [(r["index"], s["caption"], "synthetic", s["score"]) for s in r["synthetic"]
                  if s["caption"]]
    return pairs


def oracle_pairs(cfg: synthetic.SyntheticConfig) -> list[Pair]:
    """Every train_web image with the true descriptive caption its web text replaced."""
    return [(i, ex.clean_caption, "oracle", 1.0)
            for i, ex in enumerate(synthetic.generate(cfg, "train_web"))]


def caption_quality(records: Sequence[Mapping[str, Any]], cfg: synthetic.SyntheticConfig) -> dict:
    """Synthetic captions against their scene: share true (parse_caption + is_true; a caption
    outside the data's language counts as not true), share parseable, shapes named per caption,
    share of distinct captions, and the share kept by the filter among true and false ones."""
    true = parsed = named = kept_true = kept_false = 0
    texts: list[str] = []
    for r in records:
        if not r["valid"]:
            continue
        scene = synthetic.scene_at(cfg, "train_web", r["index"])
        for s in r["synthetic"]:
            caption = synthetic.parse_caption(s["caption"])
            ok = caption is not None and synthetic.is_true(caption, scene)
            texts.append(s["caption"])
            parsed += caption is not None
            named += len(caption.mentions) if caption is not None else 0
            true += ok
            kept_true += ok and s["kept"]
            kept_false += (not ok) and s["kept"]
    n = len(texts)
    pct = lambda a, b: 100.0 * a / b if b else None  # noqa: E731
    return {"synthetic_captions": n, "true_pct": pct(true, n), "parseable_pct": pct(parsed, n),
            "shapes_named_mean": named / parsed if parsed else None,
            "distinct_pct": pct(len(set(texts)), n),
            "kept_among_true_pct": pct(kept_true, true),
            "kept_among_false_pct": pct(kept_false, n - true)}

