#!/usr/bin/env bash
# QLoRA training benchmark (ftune only: the peer's QLoRA needs bitsandbytes). Appends one JSON line
# per workload to OUT.jsonl (see bench/lora_gpu.cpp for the fields).
#   bash bench/run_qlora.sh BUILD_DIR OUT.jsonl [WORKLOAD...]
# Workloads: 7b, 7b_ckpt, 7b_ckpt_offload (layer inputs in host memory, paged 8-bit AdamW),
# 13b, 13b_ckpt_offload, 70b_ckpt_offload (20 steps). All at seq 2048, micro-batch 4, LoRA r 16.
set -euo pipefail
build=$1 out=$2
shift 2
if [ $# -gt 0 ]; then workloads=("$@"); else workloads=(7b 7b_ckpt 7b_ckpt_offload 13b 13b_ckpt_offload 70b_ckpt_offload); fi
common=(--qlora --seq 2048 --micro-batch 4 --rank 16 --alpha 32)
paged=(--optimizer paged_adamw_8bit)
for w in "${workloads[@]}"; do
  steps=(--steps 6 --warmup 2)
  case $w in
    7b) args=(--shape llama2-7b) ;;
    7b_ckpt) args=(--shape llama2-7b --checkpointing) ;;
    7b_ckpt_offload) args=(--shape llama2-7b --checkpointing --offload "${paged[@]}") ;;
    13b) args=(--shape llama2-13b) ;;
    13b_ckpt_offload) args=(--shape llama2-13b --checkpointing --offload "${paged[@]}") ;;
    70b_ckpt_offload) args=(--shape llama2-70b --checkpointing --offload "${paged[@]}") steps=(--steps 20 --warmup 2) ;;
    *) echo "run_qlora.sh: unknown workload '$w'" >&2; exit 2 ;;
  esac
  "$build/bench_lora_gpu" "${args[@]}" "${common[@]}" "${steps[@]}" | tee -a "$out"
done
