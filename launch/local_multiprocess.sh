#!/usr/bin/env bash
# Several processes on this machine (CPU, fake devices), talking over loopback: the
# multi-host code path without a cluster.
#
#   launch/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS CONFIG WORKDIR [--config.KEY=VALUE ...]
set -euo pipefail
if [ $# -lt 4 ]; then sed -n '2,6p' "$0"; exit 2; fi
N=$1 D=$2 CONFIG=$3 WORKDIR=$4; shift 4
PORT=${BLIP_PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < N; i++)); do
  XLA_FLAGS=--xla_force_host_platform_device_count=$D JAX_PLATFORMS=cpu \
  BLIP_COORDINATOR=127.0.0.1:$PORT BLIP_NUM_PROCESSES=$N BLIP_PROCESS_ID=$i \
    python -m blip_jax.train --config="$CONFIG" --workdir="$WORKDIR" "$@" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
