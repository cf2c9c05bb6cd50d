#!/usr/bin/env bash
# The bootstrap experiment (README's main job; design in docs/bootstrap.md): pre-train on noisy
# web data, fine-tune a captioner and a filter, CapFilt, pre-train again on the bootstrapped
# data and on the oracle data, compare. Rerunning with the same WORKDIR resumes.
#
#   launch/bootstrap.sh [WORKDIR] [--reduced] [--ablation --seeds 3] [--rows baseline,oracle]
set -euo pipefail
WORKDIR=${1:-bootstrap_run}
[ $# -gt 0 ] && shift
# The CPU machine's cores all go to one XLA device; one process, no fake devices needed.
exec python -m blip_jax.experiments.bootstrap --workdir="$WORKDIR" "$@"
