"""Where training figures go: a console progress line, TensorBoard event files and
DIR/metrics.jsonl (one JSON object per logged step). Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping, Optional

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
    def __init__(self, workdir: str, total_steps: int, enabled: bool = True,
                 stream=sys.stdout):
        self.enabled = enabled
        self.total_steps = total_steps
        self.stream = stream
        self._jsonl = None
        self._tb: Optional[EventFileWriter] = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
            self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in metrics.items()])
        self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
        self._tb.flush()

    def progress(self, step: int, metrics: Mapping[str, float]) -> None:
        """One console line: step, losses, lr, throughput, ETA."""
        if not self.enabled:
            return
        parts = [f"step {step}/{self.total_steps}"]
        if "loss" in metrics:
            losses = " ".join(f"{k[5:]} {metrics[k]:.3f}" for k in ("loss_itc", "loss_itm", "loss_lm")
                              if k in metrics)
            parts.append(f"loss {metrics['loss']:.4f}" + (f" ({losses})" if losses else ""))
        if "lr" in metrics:
            parts.append(f"lr {metrics['lr']:.2e}")
        if "examples_per_sec" in metrics:
            parts.append(f"{metrics['examples_per_sec']:.1f} ex/s")
        if "eta_sec" in metrics and math.isfinite(metrics["eta_sec"]):
            parts.append(f"ETA {_duration(metrics['eta_sec'])}")
        extra = [f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("eval/")]
        print(" | ".join(parts + extra), file=self.stream, flush=True)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
