"""The paper's bootstrapping result (CapFilt, REFERENCE §3) reproduced in miniature on the
built-in synthetic data, end to end on a CPU:

  (a) pre-train a tiny BLIP on the noisy train_web split + train_clean;
  (b) fine-tune a captioner (LM) and a filter (ITC + ITM) from it on train_clean;
  (c) CapFilt over train_web: a nucleus-sampled synthetic caption per image, web and synthetic
      texts filtered by the filter's ITM match probability;
  (d) pre-train the same tiny BLIP from scratch on the bootstrapped data + train_clean;
  (e) evaluate both pre-trained models on the test split: zero-shot retrieval (ITC + ITM
      re-rank) and CIDEr after the same short caption fine-tune.
  control: pre-train once more on a random subset of train_web as large as the bootstrapped
      set (+ train_clean), to separate "which texts were removed" from "how many".

    python -m blip_jax.experiments.bootstrap --workdir=bootstrap_run

Every stage writes into WORKDIR/<stage>; a rerun skips finished stages and resumes the
interrupted one. Results: WORKDIR/results.json, WORKDIR/results.md (the table) and
WORKDIR/bootstrap.png (training curves and results).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import ml_collections

from blip_jax.experiments import tiny


@dataclasses.dataclass(frozen=True)
class Scale:
    """Steps per stage and the dataset size. FULL is the README's run; REDUCED is the CI test."""

    pretrain_steps: int = 600
    caption_steps: int = 300
    filter_steps: int = 600
    num_images: int = tiny.NUM_IMAGES
    eval_images: int = 0  # test images evaluated (0 = all)
    k_test: int = 32
    control: bool = True  # the random-subset control pre-training


FULL = Scale()
# CI: every stage and output for real, at a scale where pre-training has only begun to learn
# (zero-shot retrieval near chance); the comparison itself needs the FULL run.
REDUCED = Scale(pretrain_steps=250, caption_steps=120, filter_steps=250, num_images=1500,
                eval_images=150, k_test=16, control=False)


CONTROL_DATASET = "blip_capfilt/random_subset"


@dataclasses.dataclass
class Stage:
    key: str
    title: str
    done: Callable[[], bool]
    run: Callable[[], Any]


def _configure(c: ml_collections.ConfigDict, data_dir: str, scale: Scale,
               seed: int) -> ml_collections.ConfigDict:
    c.data.data_dir = data_dir
    c.data.synthetic_num_images = scale.num_images
    c.seed = seed
    c.eval.max_images = scale.eval_images
    return c


def stage_configs(workdir: str, data_dir: str, scale: Scale, seed: int = 0,
                  bootstrapped: str = "blip_capfilt/bootstrapped") -> dict:
    """The config of every training / evaluation stage (tests and users can inspect them).
    `bootstrapped`: the TFDS name of CapFilt's output dataset."""
    path = lambda *p: os.path.join(workdir, *p)  # noqa: E731
    cfg = {}
    for name in ("a_pretrain_noisy", "d_pretrain_bootstrapped", "control_pretrain_random"):
        c = _configure(tiny.pretrain(scale.pretrain_steps), data_dir, scale, seed)
        c.eval.every_steps = 0  # evaluated once, fully, in stage (e)
        cfg[name] = c
    # Stage (d) reads CapFilt's output dataset (its name is in CapFilt's summary).
    cfg["d_pretrain_bootstrapped"].data.train_sources = [(bootstrapped, "train"),
                                                         ("synthetic", "train_clean")]
    cfg["control_pretrain_random"].data.train_sources = [(CONTROL_DATASET, "train"),
                                                         ("synthetic", "train_clean")]
    for name, init in (("b_captioner", "a_pretrain_noisy"),
                       ("e_captioner_bootstrapped", "d_pretrain_bootstrapped")):
        c = _configure(tiny.caption(scale.caption_steps), data_dir, scale, seed)
        c.init_checkpoint = path(init, "model")
        cfg[name] = c
    c = _configure(tiny.retrieval(scale.filter_steps), data_dir, scale, seed)
    c.init_checkpoint = path("a_pretrain_noisy", "model")
    c.eval.k_test = scale.k_test
    cfg["b_filter"] = c
    # Zero-shot retrieval of a pre-trained model: the retrieval protocol on its untied encoder.
    z = _configure(tiny.retrieval(0), data_dir, scale, seed)
    z.eval.k_test = scale.k_test
    cfg["zero_shot"] = z
    return cfg


def capfilt_config(workdir: str, data_dir: str, scale: Scale, seed: int = 0):
    from blip_jax import capfilt

    c = capfilt.default_config()
    c.data_dir = data_dir
    c.sources = [("synthetic", "train_web")]
    c.synthetic_num_images = scale.num_images
    c.captioner_checkpoint = os.path.join(workdir, "b_captioner", "model")
    c.filter_checkpoint = os.path.join(workdir, "b_filter", "model")
    c.max_tokens = 24
    c.per_device_batch = 64
    c.records_per_shard = 512
    c.seed = seed
    c.output_name = "bootstrapped"
    c.output_data_dir = ""
    return c


def write_control_dataset(workdir: str, data_dir: str, scale: Scale, seed: int = 0) -> str:
    """A random subset of the web records (their web texts, unfiltered) as large as the
    bootstrapped set (web + synthetic pairs), in CapFilt's output layout."""
    import numpy as np

    from blip_jax.capfilt.dataset import write_dataset
    from blip_jax.capfilt.job import resolve_sources
    from blip_jax.data.sources import RecordSource

    with open(os.path.join(workdir, "c_capfilt", "summary.json")) as f:
        size = json.load(f)["pairs_kept"]
    sources = resolve_sources(capfilt_config(workdir, data_dir, scale, seed))
    records = RecordSource(data_dir, sources)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(records), size=min(size, len(records)), replace=False))
    pairs = [(int(i), records[int(i)]["captions"][0], "web", 1.0) for i in chosen]
    return write_dataset(data_dir=data_dir, name=CONTROL_DATASET.split("/")[1], pairs=pairs,
                         source_data_dir=data_dir, sources=sources,
                         origin=f"bootstrap control {workdir}")


def _evaluate(config, checkpoint: str, out: str) -> dict:
    from blip_jax import evaluate

    if os.path.exists(out):
        with open(out) as f:
            return json.load(f)["metrics"]
    return evaluate.run(config, checkpoint, split="test", output=out)["metrics"]


def run(workdir: str, data_dir: str = "", scale: Scale = FULL, seed: int = 0,
        log: Callable[[str], None] = print) -> dict:
    """Runs (or resumes) every stage; returns the results (also written to WORKDIR)."""
    from blip_jax import capfilt
    from blip_jax.train.trainer import train

    workdir = os.path.abspath(workdir)
    data_dir = os.path.abspath(data_dir or os.path.join(workdir, "data"))
    os.makedirs(workdir, exist_ok=True)
    cfg = stage_configs(workdir, data_dir, scale, seed)
    path = lambda *p: os.path.join(workdir, *p)  # noqa: E731
    model_done = lambda name: (lambda: os.path.exists(path(name, "model", "config.json")))  # noqa: E731
    results: dict[str, Any] = {"scale": dataclasses.asdict(scale), "seed": seed}

    def train_stage(name):
        return lambda: train(cfg[name], path(name))

    def pretrain_control():
        write_control_dataset(workdir, data_dir, scale, seed)
        train(cfg["control_pretrain_random"], path("control_pretrain_random"))

    def pretrain_bootstrapped():
        with open(path("c_capfilt", "summary.json")) as f:
            dataset = json.load(f)["dataset"]
        c = stage_configs(workdir, data_dir, scale, seed, bootstrapped=dataset)
        train(c["d_pretrain_bootstrapped"], path("d_pretrain_bootstrapped"))

    def eval_stage():
        zs = cfg["zero_shot"]
        r = results
        r["zero_shot_noisy"] = _evaluate(zs, path("a_pretrain_noisy", "model"),
                                         path("eval", "zero_shot_noisy.json"))
        r["zero_shot_bootstrapped"] = _evaluate(zs, path("d_pretrain_bootstrapped", "model"),
                                                path("eval", "zero_shot_bootstrapped.json"))
        if scale.control:
            r["zero_shot_control"] = _evaluate(zs, path("control_pretrain_random", "model"),
                                               path("eval", "zero_shot_control.json"))
        r["filter_finetuned"] = _evaluate(cfg["b_filter"], path("b_filter", "model"),
                                          path("eval", "filter_finetuned.json"))
        r["caption_noisy"] = _evaluate(cfg["b_captioner"], path("b_captioner", "model"),
                                       path("eval", "caption_noisy.json"))
        r["caption_bootstrapped"] = _evaluate(cfg["e_captioner_bootstrapped"],
                                              path("e_captioner_bootstrapped", "model"),
                                              path("eval", "caption_bootstrapped.json"))
        r["caption_agnostic_baseline"] = _caption_agnostic(cfg["b_captioner"])

    stages = [
        Stage("a_pretrain_noisy", "(a) pre-train on noisy web + clean",
              model_done("a_pretrain_noisy"), train_stage("a_pretrain_noisy")),
        Stage("b_captioner", "(b) fine-tune the captioner (LM) on clean",
              model_done("b_captioner"), train_stage("b_captioner")),
        Stage("b_filter", "(b) fine-tune the filter (ITC + ITM) on clean",
              model_done("b_filter"), train_stage("b_filter")),
        Stage("c_capfilt", "(c) CapFilt over train_web",
              lambda: os.path.exists(path("c_capfilt", "summary.json")),
              lambda: capfilt.run(capfilt_config(workdir, data_dir, scale, seed), path("c_capfilt"))),
        Stage("d_pretrain_bootstrapped", "(d) pre-train on bootstrapped web + clean",
              model_done("d_pretrain_bootstrapped"), pretrain_bootstrapped),
        Stage("e_captioner_bootstrapped", "(e) caption fine-tune of the bootstrapped model",
              model_done("e_captioner_bootstrapped"), train_stage("e_captioner_bootstrapped")),
        Stage("control_pretrain_random", "(control) pre-train on a random web subset of that size",
              model_done("control_pretrain_random"), pretrain_control) if scale.control else None,
        Stage("e_evaluate", "(e) evaluate both models on test", lambda: False, eval_stage),
    ]
    stages = [s for s in stages if s is not None]
    t_start = time.time()
    timings = {}
    for i, stage in enumerate(stages, 1):
        head = f"[stage {i}/{len(stages)}] {stage.title}"
        if stage.done():
            log(f"{head}: done earlier, skipped")
            continue
        log(f"{head} ...")
        t0 = time.time()
        stage.run()
        timings[stage.key] = time.time() - t0
        log(f"{head}: finished in {_minutes(timings[stage.key])} "
            f"(total {_minutes(time.time() - t_start)})")
    with open(path("c_capfilt", "summary.json")) as f:
        results["capfilt"] = json.load(f)
    results["stage_seconds"] = timings
    results["curves"] = {name: _curves(path(name, "metrics.jsonl"))
                         for name in ("a_pretrain_noisy", "d_pretrain_bootstrapped",
                                      "control_pretrain_random")
                         if os.path.exists(path(name, "metrics.jsonl"))}
    table = results_table(results)
    results["table"] = table
    with open(path("results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(path("results.md"), "w") as f:
        f.write(table + "\n")
    plot(results, path("bootstrap.png"))
    log(table)
    log(f"results: {path('results.json')}, {path('results.md')}, plot {path('bootstrap.png')}")
    return results


def _caption_agnostic(config) -> dict:
    """CIDEr etc. of emitting one fixed caption for every test image."""
    from blip_jax.evaluation import captioning, tasks
    from blip_jax.train import input as train_input

    name, _ = config.data.eval_source
    data = tasks.load_eval_data(config, train_input.data_dir(config),
                                train_input.resolve(config, name), "test")
    ids = [int(i) for i in data.image_ids]
    references = {i: [data.texts[t] for t in ts] for i, ts in zip(ids, data.image_to_texts)}
    return captioning.caption_metrics(captioning.caption_agnostic_baseline(references), references)


def _curves(metrics_path: str) -> dict[str, list]:
    out: dict[str, list] = {"step": []}
    if not os.path.exists(metrics_path):
        return out
    with open(metrics_path) as f:
        for line in f:
            row = json.loads(line)
            out["step"].append(row["step"])
            for k in ("loss_itc", "loss_itm", "loss_lm"):
                out.setdefault(k, []).append(row.get(k))
    return out


def _pct(fraction):
    return None if fraction is None else 100.0 * fraction


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def results_table(r: dict) -> str:
    zn, zb = r["zero_shot_noisy"], r["zero_shot_bootstrapped"]
    zc = r.get("zero_shot_control")
    cell = lambda m, k: f"{m[k]:.1f}" if m else "-"  # noqa: E731
    cn, cb = r["caption_noisy"], r["caption_bootstrapped"]
    cf = r["capfilt"]
    rows = [("zero-shot TR@1", "txt_r1"), ("zero-shot TR@5", "txt_r5"),
            ("zero-shot IR@1", "img_r1"), ("zero-shot IR@5", "img_r5"),
            ("zero-shot R mean", "r_mean")]
    lines = ["| test split | noisy baseline | bootstrapped | control: random subset of that size |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {title} | {zn[k]:.1f} | {zb[k]:.1f} | {cell(zc, k)} |" for title, k in rows]
    lines += [f"| caption CIDEr (fine-tuned) | {100 * cn['CIDEr']:.1f} | {100 * cb['CIDEr']:.1f} "
              f"| |",
              f"| caption BLEU-4 (fine-tuned) | {100 * cn['Bleu_4']:.1f} | "
              f"{100 * cb['Bleu_4']:.1f} | |"]
    lines += ["", "| CapFilt on train_web | |", "| --- | ---: |"]
    filt = cf.get("filter") or {}
    for title, value in (("web texts kept %", cf.get("web_kept_pct")),
                         ("synthetic captions kept %", cf.get("synthetic_kept_pct")),
                         ("filter precision: removed web texts that were noise %",
                          _pct(filt.get("precision"))),
                         ("filter recall: noisy web texts removed %", _pct(filt.get("recall")))):
        if value is not None:
            lines.append(f"| {title} | {value:.1f} |")
    for kind, v in filt.get("by_noise_kind", {}).items():
        lines.append(f"| removed among '{kind}' web texts ({v['count']}) % | {v['removed_pct']:.1f} |")
    ff, base = r["filter_finetuned"], r["caption_agnostic_baseline"]
    lines += ["", "| fine-tuning from the noisy pre-training | |", "| --- | ---: |",
              f"| retrieval TR@1 / IR@1: zero-shot | {zn['txt_r1']:.1f} / {zn['img_r1']:.1f} |",
              f"| retrieval TR@1 / IR@1: fine-tuned (the filter) | {ff['txt_r1']:.1f} / "
              f"{ff['img_r1']:.1f} |",
              f"| CIDEr: caption-agnostic baseline | {100 * base['CIDEr']:.1f} |",
              f"| CIDEr: fine-tuned captioner | {100 * cn['CIDEr']:.1f} |"]
    return "\n".join(lines)


def plot(r: dict, out_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    labels = {"a_pretrain_noisy": "noisy baseline", "d_pretrain_bootstrapped": "bootstrapped",
              "control_pretrain_random": "control (random subset)"}
    for ax, loss in zip(axes[:2], ("loss_itc", "loss_lm")):
        for name, label in labels.items():
            c = r["curves"].get(name, {})
            if c.get(loss):
                ax.plot(c["step"], c[loss], label=label)
        ax.set_title(f"pre-training {loss[5:].upper()} loss")
        ax.set_xlabel("step")
        ax.legend()
    keys = [("TR@1", "txt_r1"), ("IR@1", "img_r1"), ("TR@5", "txt_r5"), ("IR@5", "img_r5")]
    width = 0.27
    bars = [b for b in (("zero_shot_noisy", "noisy"), ("zero_shot_bootstrapped", "bootstrapped"),
                        ("zero_shot_control", "control")) if b[0] in r]
    for j, (name, label) in enumerate(bars):
        axes[2].bar([i + j * width for i in range(len(keys))], [r[name][k] for _, k in keys],
                    width, label=label)
    axes[2].set_xticks([i + width for i in range(len(keys))], [t for t, _ in keys])
    axes[2].set_title("zero-shot retrieval on test (%)")
    axes[2].legend()
    cider = {"caption-agnostic": r["caption_agnostic_baseline"]["CIDEr"],
             "noisy": r["caption_noisy"]["CIDEr"], "bootstrapped": r["caption_bootstrapped"]["CIDEr"]}
    axes[3].bar(list(cider), [100 * v for v in cider.values()], color=["grey", "C0", "C1"])
    axes[3].set_title("CIDEr on test after caption fine-tune")
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


def main(argv) -> None:
    from absl import flags, logging

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    scale = REDUCED if f.reduced else FULL
    changes = {k: getattr(f, k) for k in ("pretrain_steps", "caption_steps", "filter_steps")
               if getattr(f, k)}
    run(f.workdir, f.data_dir, dataclasses.replace(scale, **changes), seed=f.seed)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", "bootstrap_run", "Where every stage writes (rerun resumes).")
    flags.DEFINE_string("data_dir", "", "TFDS data dir (default WORKDIR/data); the synthetic "
                        "data is written there on first use.")
    flags.DEFINE_bool("reduced", False, "The reduced CI-size run (fewer steps and images).")
    flags.DEFINE_integer("pretrain_steps", 0, "Override the pre-training steps (0 = scale's).")
    flags.DEFINE_integer("caption_steps", 0, "Override the captioner fine-tune steps.")
    flags.DEFINE_integer("filter_steps", 0, "Override the filter fine-tune steps.")
    flags.DEFINE_integer("seed", 0, "Seed of every stage.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
