#!/usr/bin/env bash
# Pre-train on a SLURM GPU cluster: one process per node, all local GPUs per process.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#
# Assumes this repository on a shared filesystem with its virtual environment installed
# (`pip install -e . "jax[cuda12]==0.10.2"`) and WORKDIR on shared storage.
# BLIP_MODULE=blip_jax.capfilt runs CapFilt instead of training (the same arguments).
#SBATCH --job-name=blip_jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,8p' "$0"; exit 2; fi
CONFIG=$1 WORKDIR=$2; shift 2
MODULE=${BLIP_MODULE:-blip_jax.train}
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
. .venv/bin/activate
COORD_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export BLIP_COORDINATOR="${COORD_HOST}:${BLIP_PORT:-12355}"
export BLIP_NUM_PROCESSES=$SLURM_NNODES
# srun starts one task per node; each reads its rank from SLURM_PROCID.
srun bash -c "BLIP_PROCESS_ID=\$SLURM_PROCID python -m $MODULE --config=$CONFIG --workdir=$WORKDIR $*"
