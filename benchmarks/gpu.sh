#!/bin/bash
# Issue 16, target 6 on one GPU, in one call (a lent device's minutes are few):
#   1. the pre-training step at base/224 in bfloat16 (float32 params and optimiser state) with
#      the original's per-GPU batch and queue (configs/pretrain.yaml: batch_size 75, queue_size
#      57600): model-FLOPs MFU against the bf16 matmul peak measured in the same run and against
#      the datasheet's dense bf16 peak (989 TFLOP/s, H100/H200 SXM);
#   2. CapFilt images/s per device at base/384 in bfloat16 against its FLOP bound.
#
#   bash benchmarks/gpu.sh [OUT_DIR] [train|capfilt|both]   # from the repository root, on a GPU
#
# Time it needs (one H200, jax 0.11.2, 2026-12-04): the train step's set-up took 101 s (params,
# optimiser and queues initialised on the GPU) and its compile over 180 s (still compiling, with
# XLA's GEMM autotuning, when a 290 s limit ended it), so give `train` 9-10 minutes alone
# (TRAIN_TIMEOUT, default 540 s); `capfilt` took 170 s for two batch sizes (~50 s compile each).
#
# Needs jax with its CUDA plugin, flax, optax, orbax-checkpoint, tokenizers and ml_collections.
# Wheels in .whl/ (e.g. ml_collections, where the machine has no registry) are installed first.
# Each benchmark runs under its own timeout, so a failure in one leaves the other's figures.
set -u
out=${1:-${OUT:-benchmarks/results}}
what=${2:-train}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/blip_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/blip_site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv \
  | tee "$out/gpu_nvidia_smi.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())" 2>&1 | tee "$out/gpu_versions.txt"

if [ "$what" != capfilt ]; then
timeout "${TRAIN_TIMEOUT:-540}" python3 benchmarks/train_step.py --configs base \
  --base-batch 75 --queue-size 57600 --dtype bfloat16 --datasheet-peak-tflops 989 \
  --repeats 5 --no-xla-unrolled-cost --result train_step_gpu 2>&1 | tee "$out/gpu_train_step.log"
cp benchmarks/results/train_step_gpu.json "$out/" 2>/dev/null
fi

if [ "$what" != train ]; then
timeout "${CAPFILT_TIMEOUT:-200}" python3 benchmarks/capfilt.py --dtype bfloat16 \
  --per-device-batch ${CAPFILT_BATCHES:-64 512} --steps 3 2>&1 | tee "$out/gpu_capfilt.log"
cp benchmarks/results/capfilt.json "$out/capfilt_gpu.json" 2>/dev/null
fi
exit 0
