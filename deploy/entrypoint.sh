#!/bin/sh
# The image's entry point: ftune itself reads the launcher's environment (torchrun's RANK,
# WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT and agent store; Kubeflow's PET_*; Slurm's
# SLURM_*), so this only makes a few cluster defaults explicit and runs it. A SIGTERM from the
# kubelet reaches ftune directly (exec), which checkpoints within train.grace_s and exits 75.
set -eu
# Shared memory: Gloo and pinned host buffers need more than the 64 MB default /dev/shm of a
# container; the pod templates mount a memory-backed volume there.
if [ -d /dev/shm ]; then
  shm_kb=$(df -k /dev/shm | awk 'NR == 2 {print $2}')
  if [ "${shm_kb:-0}" -lt 1048576 ]; then
    echo "ftune-entrypoint: /dev/shm has ${shm_kb} KB; mount a memory-backed volume of a few GB there" >&2
  fi
fi
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
exec ftune "$@"
