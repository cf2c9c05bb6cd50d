"""The bootstrap experiment's results over seeds: mean and sample standard deviation per row,
differences paired by seed against the noisy baseline classified by the rules docs/bootstrap.md
fixed in advance, the filter and synthetic-caption diagnostics, the table and the plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# (key in results, title, (metric group, metric name), scale to percent)
METRICS = (
    ("zs_tr1", "zero-shot TR@1", ("zero_shot", "txt_r1"), 1.0),
    ("zs_ir1", "zero-shot IR@1", ("zero_shot", "img_r1"), 1.0),
    ("zs_rmean", "zero-shot R mean", ("zero_shot", "r_mean"), 1.0),
    ("ft_rmean", "fine-tuned R mean", ("retrieval", "r_mean"), 1.0),
    ("cider", "CIDEr", ("caption", "CIDEr"), 100.0),
    ("bleu4", "BLEU-4", ("caption", "Bleu_4"), 100.0),
)
PRIMARY = "zs_rmean"
SECONDARY = ("ft_rmean", "cider")
MARGIN = 2.0          # the claim's rule (docs/bootstrap.md)
REGIME_MARGIN = 5.0   # the oracle's required lead over the baseline
TITLES = {"baseline": "noisy baseline", "filter": "+F", "caption": "+C", "capfilt": "+C+F",
          "capfilt_beam": "+C+F, beam", "oracle": "oracle"}


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    n = len(values)
    m = sum(values) / n
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else None)


def verdict(diffs: Sequence[float], margin: float = MARGIN) -> str:
    """The pre-registered rule on differences paired by seed."""
    m = sum(diffs) / len(diffs)
    if m >= margin and all(d > 0 for d in diffs):
        return "better"
    if m <= -margin and all(d < 0 for d in diffs):
        return "worse"
    return "not shown either way"


def aggregate(per_seed: Sequence[dict], conditions: Sequence[str]) -> dict[str, Any]:
    seeds = [r["seed"] for r in per_seed]
    values = {c: {key: [r["conditions"][c][group][name] * scale for r in per_seed]
                  for key, _, (group, name), scale in METRICS} for c in conditions}
    out: dict[str, Any] = {"seeds": seeds, "conditions": list(conditions), "values": values,
                           "summary": {c: {k: mean_std(v) for k, v in values[c].items()}
                                       for c in conditions}}
    # Rows whose filter kept no web pair in some seed pre-trained on train_clean alone there.
    out["no_web_pairs"] = {c: [r["seed"] for r in per_seed
                               if r["conditions"][c].get("web_sources") == []] for c in conditions}
    comparisons = {}
    pairs = [(c, "baseline") for c in conditions if c != "baseline"]
    if {"capfilt", "capfilt_beam"} <= set(conditions):
        pairs.append(("capfilt", "capfilt_beam"))
    for a, b in pairs:
        comp = {}
        for key in (PRIMARY,) + SECONDARY:
            diffs = [x - y for x, y in zip(values[a][key], values[b][key])]
            comp[key] = {"diffs": diffs, "mean": sum(diffs) / len(diffs), "verdict": verdict(diffs)}
        comparisons[f"{a} - {b}"] = comp
    out["comparisons"] = comparisons
    if "oracle" in conditions:
        c = comparisons["oracle - baseline"]
        ok = all(c[k]["mean"] >= REGIME_MARGIN and all(d > 0 for d in c[k]["diffs"])
                 for k in (PRIMARY, "cider"))
        out["regime_check"] = {"passed": ok, "zs_rmean_lead": c[PRIMARY]["diffs"],
                               "cider_lead": c["cider"]["diffs"], "required": REGIME_MARGIN}
    diag: dict[str, Any] = {}
    for name in ("capfilt", "capfilt_beam"):
        runs = [r[name] for r in per_seed if name in r]
        if not runs:
            continue
        kinds = runs[0]["removed_by_kind"].keys()
        filt = [r["summary"].get("filter") or {} for r in runs]
        diag[name] = {
            "removed_by_kind": {k: mean_std([r["removed_by_kind"][k]["removed_pct"] for r in runs])
                                for k in kinds},
            "precision": mean_std([100 * f["precision"] for f in filt if f.get("precision") is not None] or [math.nan]),
            "recall": mean_std([100 * f["recall"] for f in filt if f.get("recall") is not None] or [math.nan]),
            "web_kept_pct": mean_std([r["summary"]["web_kept_pct"] for r in runs]),
            "synthetic_kept_pct": mean_std([r["summary"]["synthetic_kept_pct"] for r in runs]),
            "synthetic_quality": {k: mean_std([r["synthetic_quality"][k] for r in runs
                                               if r["synthetic_quality"][k] is not None] or [math.nan])
                                  for k in runs[0]["synthetic_quality"]}}
    out["capfilt_diagnostics"] = diag
    out["caption_agnostic_cider"] = mean_std([100 * r["caption_agnostic_baseline"]["CIDEr"] for r in per_seed])
    out["vision_init_object_accuracy"] = mean_std([100 * r["vision_init"]["eval_object_accuracy"]
                                                   for r in per_seed])
    out["curves"] = {c: per_seed[0]["conditions"][c]["curves"] for c in conditions}
    return out


def _cell(ms: tuple[float, float | None]) -> str:
    m, s = ms
    if m != m:  # nan
        return "-"
    return f"{m:.1f}" if s is None else f"{m:.1f} ± {s:.1f}"


def markdown(r: dict[str, Any]) -> str:
    n = len(r["seeds"])
    spread = f"mean ± sample std over seeds {r['seeds']}" if n > 1 else f"seed {r['seeds'][0]}"
    lines = [f"Test split, {spread}:", "",
             "| row | " + " | ".join(title for _, title, _, _ in METRICS) + " |",
             "| --- |" + " ---: |" * len(METRICS)]
    for c in r["conditions"]:
        lines.append(f"| {TITLES[c]} | " + " | ".join(_cell(r["summary"][c][k]) for k, *_ in METRICS) + " |")
    for c, seeds in r.get("no_web_pairs", {}).items():
        if seeds:
            lines.append(f"\n{TITLES[c]}: the filter kept no web pair in seed(s) {seeds}; that row "
                         "pre-trained on the human-annotated split alone there.")
    lines += ["", "Differences paired by seed (points; per seed in brackets) and the pre-registered "
              f"verdict (mean >= {MARGIN:g} with every seed positive: better; the mirror: worse):", "",
              "| comparison | zero-shot R mean (primary) | fine-tuned R mean | CIDEr |",
              "| --- | --- | --- | --- |"]
    for name, comp in r["comparisons"].items():
        a, b = name.split(" - ")
        cells = []
        for key in (PRIMARY,) + SECONDARY:
            c = comp[key]
            per = ", ".join(f"{d:+.1f}" for d in c["diffs"])
            cells.append(f"{c['mean']:+.1f} [{per}] {c['verdict']}")
        lines.append(f"| {TITLES[a]} vs {TITLES[b]} | " + " | ".join(cells) + " |")
    if "regime_check" in r:
        rc = r["regime_check"]
        lines += ["", f"Regime check (oracle leads the baseline by >= {rc['required']:g} points of zero-shot "
                  f"R mean and of CIDEr, every seed positive): **{'passed' if rc['passed'] else 'FAILED'}**."]
    for name, d in r["capfilt_diagnostics"].items():
        lines += ["", f"CapFilt ({'beam' if name.endswith('beam') else 'nucleus'}) on train_web:", "",
                  "| | % |", "| --- | ---: |",
                  f"| web texts kept | {_cell(d['web_kept_pct'])} |",
                  f"| synthetic captions kept | {_cell(d['synthetic_kept_pct'])} |",
                  f"| filter precision (removed texts that were noise) | {_cell(d['precision'])} |",
                  f"| filter recall (noise removed) | {_cell(d['recall'])} |"]
        lines += [f"| removed among '{k}' web texts | {_cell(v)} |" for k, v in d["removed_by_kind"].items()]
        q = d["synthetic_quality"]
        lines += [f"| synthetic captions true of their image | {_cell(q['true_pct'])} |",
                  f"| synthetic captions in the data's language | {_cell(q['parseable_pct'])} |",
                  f"| distinct synthetic captions | {_cell(q['distinct_pct'])} |",
                  f"| kept among true synthetic captions | {_cell(q['kept_among_true_pct'])} |",
                  f"| kept among false synthetic captions | {_cell(q['kept_among_false_pct'])} |",
                  f"| shapes named per synthetic caption (mean) | {_cell(q['shapes_named_mean'])} |"]
    lines += ["", f"Caption-agnostic CIDEr (one fixed caption for every image): "
              f"{_cell(r['caption_agnostic_cider'])}; vision init object accuracy (held out): "
              f"{_cell(r['vision_init_object_accuracy'])}%."]
    return "\n".join(lines)


def plot(r: dict[str, Any], out_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = r["conditions"]
    fig, axes = plt.subplots(1, 5, figsize=(24, 4.2))
    for ax, key in zip(axes[:3], (PRIMARY,) + SECONDARY):
        title = next(t for k, t, *_ in METRICS if k == key)
        means = [r["summary"][c][key][0] for c in conds]
        stds = [r["summary"][c][key][1] or 0.0 for c in conds]
        ax.bar(range(len(conds)), means, yerr=stds, capsize=4,
               color=[f"C{i}" for i in range(len(conds))])
        for i, c in enumerate(conds):  # every seed as a dot
            vals = r["values"][c][key]
            ax.scatter([i] * len(vals), vals, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(conds)), [TITLES[c] for c in conds], rotation=30, ha="right")
        ax.set_title(f"{title} (test)")
    d = r["capfilt_diagnostics"].get("capfilt")
    if d:
        kinds = list(d["removed_by_kind"])
        axes[3].bar(range(len(kinds)), [d["removed_by_kind"][k][0] for k in kinds],
                    yerr=[d["removed_by_kind"][k][1] or 0.0 for k in kinds], capsize=4,
                    color=["C2" if k in ("descriptive", "partial", "hypernym", "one_attribute") else "C3"
                           for k in kinds])
        axes[3].set_xticks(range(len(kinds)), kinds, rotation=30, ha="right")
        axes[3].set_title("filter: % removed per web text kind\n(green: true, red: noise)")
    for c in conds:
        curve = r["curves"].get(c, {})
        if curve.get("loss_itc"):
            axes[4].plot(curve["step"], curve["loss_itc"], label=TITLES[c])
    axes[4].set_title(f"pre-training ITC loss (seed {r['seeds'][0]})")
    axes[4].set_xlabel("step")
    axes[4].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
