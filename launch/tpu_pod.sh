#!/usr/bin/env bash
# Pre-train on a Cloud TPU pod slice: create the VM, copy this repository to every worker,
# install, and run the same command on all workers (JAX discovers the pod topology itself).
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR CONFIG WORKDIR [--config.KEY=VALUE ...]
#   e.g. launch/tpu_pod.sh blip-v4 us-central2-b v4-64 configs/pretrain_base.py gs://bucket/blip_base
#
# WORKDIR should be a gs:// path (orbax writes checkpoints from all hosts together) and the
# datasets must be readable from every worker (config.data.data_dir).
# BLIP_MODULE=blip_jax.capfilt runs CapFilt instead of training (the same arguments).
set -euo pipefail
if [ $# -lt 5 ]; then sed -n '2,10p' "$0"; exit 2; fi
NAME=$1 ZONE=$2 ACCEL=$3 CONFIG=$4 WORKDIR=$5; shift 5
MODULE=${BLIP_MODULE:-blip_jax.train}
VERSION=${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)

gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" >/dev/null 2>&1 || \
  gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$ACCEL" \
    --version "$VERSION"

tar -C "$REPO_DIR" --exclude .venv --exclude .git -czf /tmp/blip_jax_src.tgz .
gcloud compute tpus tpu-vm scp /tmp/blip_jax_src.tgz "$NAME":~/ --zone "$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "
  set -e; mkdir -p ~/blip_jax && tar -C ~/blip_jax -xzf ~/blip_jax_src.tgz && cd ~/blip_jax &&
  python3 -m venv .venv && . .venv/bin/activate && pip install -q -e . 'jax[tpu]==0.10.2' &&
  BLIP_AUTO_DISTRIBUTED=1 python -m $MODULE --config=$CONFIG --workdir=$WORKDIR $*"
