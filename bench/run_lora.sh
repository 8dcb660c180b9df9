#!/usr/bin/env bash
# LoRA training benchmark, ftune beside transformers + peft on the same GPU, shapes and data.
# Appends one merged JSON line per workload to OUT.jsonl:
#   {"bench", "gpu", "ftune_tok_s", "ftune_peak_gib", "peer_tok_s", "peer_peak_gib", "ratio", ...}
#   bash bench/run_lora.sh BUILD_DIR OUT.jsonl [WORKLOAD...]
# Workloads: 7b (Llama-2-7B shape, seq 2048, micro-batch 4, r 16), 7b_ckpt (the same with
# gradient checkpointing), tinyllama (TinyLlama-1.1B shape, seq 2048, micro-batch 4, r 16).
set -euo pipefail
build=$1 out=$2
shift 2
if [ $# -gt 0 ]; then workloads=("$@"); else workloads=(7b 7b_ckpt tinyllama); fi
here=$(cd "$(dirname "$0")" && pwd)
for w in "${workloads[@]}"; do
  case $w in
    7b) args=(--shape llama2-7b) ;;
    7b_ckpt) args=(--shape llama2-7b --checkpointing) ;;
    tinyllama) args=(--shape tinyllama) ;;
    13b_ckpt) args=(--shape llama2-13b --checkpointing) ;;
    *) echo "run_lora.sh: unknown workload '$w' (7b, 7b_ckpt, tinyllama, 13b_ckpt)" >&2; exit 2 ;;
  esac
  common=(--seq 2048 --micro-batch 4 --rank 16 --alpha 32 --steps 10 --warmup 3)
  ours=$("$build/bench_lora_gpu" "${args[@]}" "${common[@]}")
  echo "$ours" >&2
  peer=$(python3 "$here/peer_lora.py" "${args[@]}" "${common[@]}" | tail -1)
  echo "$peer" >&2
  python3 - "$ours" "$peer" >>"$out" <<'PY'
import json, sys
ours, peer = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rec = {"bench": ours["bench"], "gpu": ours["gpu"], "ftune_tok_s": ours["ftune_tok_s"],
       "ftune_peak_gib": ours["ftune_peak_gib"], "peer_tok_s": peer.get("peer_tok_s"),
       "peer_peak_gib": peer.get("peer_peak_gib"),
       "ratio": round(ours["ftune_tok_s"] / peer["peer_tok_s"], 3) if peer.get("peer_tok_s") else None}
rec.update({k: v for k, v in ours.items() if k not in rec})
rec.update({k: v for k, v in peer.items() if k not in rec and k != "gpu"})
print(json.dumps(rec))
PY
  tail -1 "$out"
done
