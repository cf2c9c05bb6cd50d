"""benchmarks/input_pipeline.py's computed demand table (no timing): examples/s a host must feed
from FLOPs per example, peak and MFU, and the cores that takes."""

import importlib.util
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("input_pipeline_bench",
                                                      os.path.join(ROOT, "benchmarks", "input_pipeline.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))


def test_demand_from_flops_peak_and_mfu(bench, tmp_path):
    path = tmp_path / "train_step.json"
    path.write_text(json.dumps({"rows": [
        {"config": "tiny", "batch": 32, "image_size": 64, "text_len": 24, "flops_per_step": 1e10},
        {"config": "base", "batch": 2, "image_size": 224, "text_len": 30, "flops_per_step": 600e9}]}))
    d = bench.demand_table(str(path), per_worker=100.0, per_cpu_second=80.0)
    assert d["flops_per_example"] == 300e9
    rows = {(r["host"], r["assumed_mfu"]): r for r in d["rows"]}
    assert len(rows) == len(bench.HOSTS) * len(bench.MFUS)
    a100 = rows[("8xA100 node (GPU)", 0.45)]
    demand = 8 * 312e12 * 0.45 / 300e9  # 3744 examples/s
    assert a100["demand_examples_per_s"] == pytest.approx(demand, abs=0.1)
    assert a100["cores_needed"] == math.ceil(demand / 100.0)
    assert a100["cores_needed_from_cpu_time"] == math.ceil(demand / 80.0)
    tpu = rows[("TPU v4 host (4 chips)", 0.30)]
    assert tpu["demand_examples_per_s"] == pytest.approx(4 * 275e12 * 0.30 / 300e9, abs=0.1)
    if d["per_accelerator_batch"]:  # REFERENCE.md present: 2880 over two 16-GPU nodes
        assert a100["per_host_batch"] == round(8 * d["per_accelerator_batch"])
        assert a100["implied_step_s"] == pytest.approx(a100["per_host_batch"] / demand, abs=1e-3)
