#!/usr/bin/env bash
# The bootstrap experiment (README's main job): pre-train on noisy web data, fine-tune a
# captioner and a filter, CapFilt, pre-train again on the bootstrapped data, compare.
# About 30 minutes on a 2-core CPU; rerunning with the same WORKDIR resumes.
#
#   launch/bootstrap.sh [WORKDIR] [--reduced] [--pretrain_steps=N ...]
set -euo pipefail
WORKDIR=${1:-bootstrap_run}
[ $# -gt 0 ] && shift
# The CPU machine's cores all go to one XLA device; one process, no fake devices needed.
exec python -m blip_jax.experiments.bootstrap --workdir="$WORKDIR" "$@"
