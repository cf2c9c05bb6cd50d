"""Pre-training step throughput of the ORIGINAL salesforce/BLIP code (PyTorch), for comparison
with ours (benchmarks/train_step.py).

Times one step of the original's `BLIP_Pretrain` (models/blip_pretrain.py) as its pretrain.py
runs it: optimizer.zero_grad(); the forward (tokenisation of the captions inside the model,
ViT + momentum encoders + queue, ITC + ITM with hard negatives + LM); (ita + itm + lm).backward();
torch.optim.AdamW(lr=3e-4, weight_decay=0.05).step(). float32 on CPU, model.train() (dropout on),
single process: a 1-process gloo group is initialised so the original's concat_all_gather runs
as written. Config from the original's configs/pretrain.yaml and configs/bert_config.json (the
BLIP_Pretrain default): ViT 'base', 224 px, queue 57600, alpha 0.4 (the value after its 2-epoch
ramp), embed_dim 256; text is padded by the original to max_length 30 (its forward uses
padding='max_length'), captions are random strings of 15-25 words. Weights are random (we time
the step, not the quality). Reports the median seconds/step, examples/s, the torch float32 matmul
peak (2048^2 matmul, median of 10) measured in the same run, and the step's matmul FLOPs counted
by torch.utils.flop_counter on one extra untimed step (matmuls/convs/attention only, so a bit
below XLA's cost-analysis count that train_step.py uses), hence achieved GFLOP/s and the ratio to
the peak. Prints a table and writes benchmarks/results/original_train_step.json (with --out).

Setup (once; the original's code is never copied into this project, it is imported from
--blip-dir):

    # commit 056a169; only models/ and configs/: the mirror lacks BLIP.gif, so a plain
    # `git archive HEAD` fails (with these paths git still warns about it, harmlessly)
    mkdir -p /work/blip-orig && git --git-dir=/work/.mirror/salesforce+BLIP/repo \\
        archive HEAD models configs | tar -x -C /work/blip-orig
    python3 -m venv /work/venv-blip-orig
    /work/venv-blip-orig/bin/pip install --no-compile torch==2.13.0 transformers==4.26.1 \\
        timm==0.4.12 fairscale==0.4.4 numpy          # pulls torchvision 0.28.0 for timm

Run (under the venv's python; this script imports neither jax nor blip_jax):

    /work/venv-blip-orig/bin/python benchmarks/original_train_step.py --batch 8 --repeats 5
    /work/venv-blip-orig/bin/python benchmarks/original_train_step.py --vit base --batch 2 \\
        --repeats 1 --warmup 1 --queue-size 256          # quick check

Compare with ours at the same batch, in our venv:

    /work/main/.venv/bin/python benchmarks/train_step.py --configs base --base-batch 8

(our base row: 224 px, text length 30, ITC+ITM+LM + AdamW step); compare examples/s and the
ratio achieved / matmul peak of each run (each run measures its own framework's peak).

Patched here, at run time, and why (no model code is changed):
  * torch.library.register_fake -> a no-op decorator factory while importing timm / the models:
    timm 0.4.12 imports torchvision, whose compiled ops do not register with this torch build.
  * BertTokenizer.from_pretrained('bert-base-uncased') -> a local vocab.txt of 30522 tokens
    ([PAD], [unused*], [UNK], [CLS], [SEP], [MASK], letters, filler words); the original's
    init_tokenizer then adds [DEC] and [ENC] (30524, as with the real vocab). No hub access.
  * BertModel/BertLMHeadModel.from_pretrained -> the class built from the given config (random
    init); torch.hub.load_state_dict_from_url (DeiT weights) -> an empty state dict, loaded by
    the original with strict=False, so the ViT keeps its random init.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

from common import RESULTS_DIR  # stdlib-only at import: no jax in this venv

VOCAB_SIZE = 30522  # bert-base-uncased


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Median float32 FLOP/s of an n x n torch matmul on the CPU."""
    a = torch.randn(n, n, dtype=torch.float32)
    a @ a
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def _filler_words() -> list[str]:
    """Lower-case pseudo-words (each one vocab entry, so one token)."""
    cons, vows = "bcdfghjklmnprstvwz", "aeiou"
    syl = [c + v for c in cons for v in vows]  # 90 syllables
    words = [a + b for a in syl for b in syl]  # 8100 two-syllable words
    words += [a + b + c for a in syl[:40] for b in syl for c in syl[:10]]  # 36000 more
    return words


def write_vocab(directory: str) -> list[str]:
    """Writes a bert-base-uncased-shaped vocab.txt of VOCAB_SIZE tokens; returns its words."""
    toks = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    toks += list(".,;:!?'\"-()0123456789") + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    toks += ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = _filler_words()[: VOCAB_SIZE - len(toks)]
    toks += words
    assert len(toks) == VOCAB_SIZE and len(set(toks)) == VOCAB_SIZE
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(toks) + "\n")
    return words


def import_original(blip_dir: str, vocab_dir: str):
    """Imports the original's models.blip_pretrain from blip_dir with the patches of the module
    docstring applied; returns the module."""
    sys.path.insert(0, os.path.abspath(blip_dir))
    register_fake = getattr(torch.library, "register_fake", None)
    if register_fake is not None:
        torch.library.register_fake = lambda *a, **k: (lambda f: f)
    try:
        import models.blip_pretrain as bp  # noqa: the original code
        import models.med as med
    finally:
        if register_fake is not None:
            torch.library.register_fake = register_fake

    tok_from_pretrained = bp.BertTokenizer.from_pretrained.__func__

    def tokenizer_from_pretrained(cls, name, *args, **kwargs):
        if name == "bert-base-uncased":
            name = vocab_dir
        return tok_from_pretrained(cls, name, *args, **kwargs)

    bp.BertTokenizer.from_pretrained = classmethod(tokenizer_from_pretrained)

    def random_from_pretrained(cls, name, *args, config=None, **kwargs):
        return cls(config, *args, **kwargs)

    for cls in (med.BertModel, med.BertLMHeadModel):
        cls.from_pretrained = classmethod(random_from_pretrained)
    torch.hub.load_state_dict_from_url = lambda *a, **k: {"model": {}}
    return bp


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _versions(blip_dir: str) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__}
    for name in ("torchvision", "timm", "transformers", "fairscale"):
        mod = sys.modules.get(name)
        out[name] = getattr(mod, "__version__", None) if mod else None
    try:
        out["blip_commit"] = subprocess.run(
            ["git", "-C", blip_dir, "rev-parse", "HEAD"], capture_output=True, text=True,
            check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["blip_commit"] = None  # an extracted archive: no git metadata
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blip-dir", default="/work/blip-orig",
                   help="checkout of salesforce/BLIP (with models/ and configs/)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--vit", default="base", choices=("base", "large"))
    p.add_argument("--queue-size", type=int, default=57600, help="pretrain.yaml: 57600")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=5, help="timed steps")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch.set_num_threads (default: os.cpu_count())")
    p.add_argument("--no-flop-count", action="store_true",
                   help="skip the extra untimed step counted with torch.utils.flop_counter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(RESULTS_DIR, "original_train_step.json"))
    args = p.parse_args()
    if args.queue_size % args.batch:
        p.error("the original asserts queue_size % batch == 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    vocab_dir = tempfile.mkdtemp(prefix="blip_orig_vocab_")
    words = write_vocab(vocab_dir)
    bp = import_original(args.blip_dir, vocab_dir)

    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        peak = matmul_peak()
        t = time.perf_counter()
        # as pretrain.py builds it (vit_grad_ckpt False, vit_ckpt_layer 0 in pretrain.yaml)
        with contextlib.redirect_stdout(open(os.devnull, "w")):  # "... is tied" x hundreds
            model = bp.blip_pretrain(
                med_config=os.path.join(args.blip_dir, "configs", "bert_config.json"),
                image_size=args.image_size, vit=args.vit, vit_grad_ckpt=False,
                vit_ckpt_layer=0, queue_size=args.queue_size)
        shutil.rmtree(vocab_dir)  # the tokenizer has read it
        model.train()
        build_s = time.perf_counter() - t
        assert len(model.tokenizer) == VOCAB_SIZE + 2, len(model.tokenizer)
        optimizer = torch.optim.AdamW(params=model.parameters(), lr=3e-4, weight_decay=0.05)
        n_params = sum(q.numel() for q in model.parameters())
        n_trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
        alpha = 0.4

        image = torch.randn(args.batch, 3, args.image_size, args.image_size)

        def captions() -> list[str]:
            return [" ".join(rng.choices(words, k=rng.randint(15, 25)))
                    for _ in range(args.batch)]

        def step(caps: list[str]) -> list[float]:
            optimizer.zero_grad()
            loss_ita, loss_itm, loss_lm = model(image, caps, alpha=alpha)
            loss = loss_ita + loss_itm + loss_lm
            loss.backward()
            optimizer.step()
            return [loss_ita.item(), loss_itm.item(), loss_lm.item()]

        batches = [captions() for _ in range(args.warmup + args.repeats + 1)]
        text_len = model.tokenizer(batches[0], padding="max_length", truncation=True,
                                   max_length=30, return_tensors="pt").input_ids.shape[1]
        all_times = []
        for i in range(args.warmup + args.repeats):
            t = time.perf_counter()
            losses = step(batches[i])
            all_times.append(time.perf_counter() - t)
            if i == 0:
                first_losses = losses
        if not all(np.isfinite(losses)):
            raise RuntimeError(f"non-finite losses {losses}")
        warm_times, times = all_times[:args.warmup], all_times[args.warmup:]
        flops = None
        if not args.no_flop_count:
            from torch.utils.flop_counter import FlopCounterMode
            counter = FlopCounterMode(display=False)
            with counter:
                step(batches[-1])
            flops = float(counter.get_total_flops())
    finally:
        torch.distributed.destroy_process_group()

    med_s = statistics.median(times)
    row = {"model": f"BLIP_Pretrain vit={args.vit}", "batch": args.batch,
           "image_size": args.image_size, "text_len": int(text_len),
           "queue_size": args.queue_size, "alpha": alpha, "threads": torch.get_num_threads(),
           "step_seconds_median": med_s, "step_seconds_min": min(times),
           "step_seconds_all": times, "warmup_seconds_all": warm_times,
           "examples_per_sec": args.batch / med_s,
           "flops_per_step_torch_counter": flops,
           "achieved_flops_per_sec": flops / med_s if flops else None,
           "ratio_to_matmul_peak": flops / med_s / peak if flops else None,
           "first_losses_ita_itm_lm": first_losses, "last_losses_ita_itm_lm": losses,
           "params": n_params, "trainable_params": n_trainable, "model_build_seconds": build_s}
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"torch float32 matmul peak (2048^3, median of 10): {peak / 1e9:.1f} GFLOP/s "
          f"({torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f})")
    print(f"{'model':22} {'batch':>5} {'px':>4} {'txt':>3} {'queue':>6} {'median s':>8} "
          f"{'min s':>7} {'ex/s':>7} {'GFLOP/step':>10} {'GFLOP/s':>8} {'/peak':>6}")
    r = row
    print(f"{r['model']:22} {r['batch']:>5} {r['image_size']:>4} {r['text_len']:>3} "
          f"{r['queue_size']:>6} {med_s:>8.3f} {min(times):>7.3f} {r['examples_per_sec']:>7.2f} "
          + (f"{flops / 1e9:>10.2f} {r['achieved_flops_per_sec'] / 1e9:>8.1f} "
             f"{100 * r['ratio_to_matmul_peak']:>5.1f}%" if flops else f"{'-':>10} {'-':>8} {'-':>6}"))
    print("losses (ita, itm, lm) of the first step: "
          + ", ".join(f"{x:.3f}" for x in first_losses)
          + "; of the last timed step: " + ", ".join(f"{x:.3f}" for x in losses))
    print(f"peak RSS of this process: {peak_rss / 2**30:.2f} GiB")
    out = {"command": shlex.join([sys.executable] + sys.argv),
           "matmul_peak_flops_per_sec": peak, "peak_rss_bytes": peak_rss, "rows": [row],
           "load_average": os.getloadavg(), "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "processor": platform.processor(),
           "blip_dir": os.path.abspath(args.blip_dir), "versions": _versions(args.blip_dir),
           "flops_note": "torch.utils.flop_counter count (matmul/conv/attention only) of one "
                         "untimed step; XLA's cost analysis in train_step.json counts all ops"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
