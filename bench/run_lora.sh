#!/usr/bin/env bash
# LoRA training benchmark, ftune beside transformers + peft on the same GPU, shapes and data: for
# each workload ftune (bench_lora_gpu), the eager peer and the torch.compile'd peer
# (peer_lora.py --compile) run one after the other, each raw line goes to stderr, and one merged
# JSON line per workload is appended to OUT.jsonl:
#   {"bench", "gpu", "ftune_tok_s", "ftune_peak_gib", "peer_tok_s", "peer_peak_gib",
#    "peer_reserved_gib", "peer_sampled_peak_gib", "peer_compile_tok_s", "peer_compile_peak_gib",
#    "peer_compile_reserved_gib", "peer_compile_sampled_peak_gib", "ratio", "ratio_compile", ...}
# ratio is ftune's tokens/s over the eager peer's, ratio_compile over the compiled peer's.
# ftune_peak_gib and peer_*sampled_peak_gib are measured alike (device memory in use sampled every
# ~1 ms, less the reading before the model); peer_*peak_gib is torch's max_memory_allocated.
# loss_first/loss_last are ftune's, peer_loss_* and peer_compile_loss_* the peers'. A compiled
# peer that fails (out of memory or any other error) does not stop the run: the line gets
# "peer_compile_error" ("oom" or a short message) instead of its numbers.
#   bash bench/run_lora.sh BUILD_DIR OUT.jsonl [WORKLOAD...]
# Workloads: 7b (Llama-2-7B shape, seq 2048, micro-batch 4, r 16), 7b_ckpt (the same with
# gradient checkpointing), tinyllama (TinyLlama-1.1B shape, seq 2048, micro-batch 4, r 16),
# 13b_ckpt (Llama-2-13B shape with gradient checkpointing).
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
  compiled_status=0
  compiled=$(python3 "$here/peer_lora.py" "${args[@]}" "${common[@]}" --compile | tail -1) || compiled_status=$?
  echo "$compiled" >&2
  python3 - "$ours" "$peer" "$compiled" "$compiled_status" >>"$out" <<'PY'
import json, sys
ours, peer = json.loads(sys.argv[1]), json.loads(sys.argv[2])
compiled_line, compiled_status = sys.argv[3], int(sys.argv[4])
try:
    compiled = json.loads(compiled_line)
except ValueError:
    compiled = None
if not isinstance(compiled, dict):
    compiled = None


def ratio(side):
    return round(ours["ftune_tok_s"] / side["peer_tok_s"], 3) if side and side.get("peer_tok_s") else None


rec = {"bench": ours["bench"], "gpu": ours["gpu"], "ftune_tok_s": ours["ftune_tok_s"],
       "ftune_peak_gib": ours["ftune_peak_gib"], "peer_tok_s": peer.get("peer_tok_s"),
       "peer_peak_gib": peer.get("peer_peak_gib"), "peer_reserved_gib": peer.get("peer_reserved_gib"),
       "peer_sampled_peak_gib": peer.get("peer_sampled_peak_gib")}
if compiled and compiled.get("peer_tok_s"):
    rec.update({"peer_compile_tok_s": compiled["peer_tok_s"],
                "peer_compile_peak_gib": compiled.get("peer_peak_gib"),
                "peer_compile_reserved_gib": compiled.get("peer_reserved_gib"),
                "peer_compile_sampled_peak_gib": compiled.get("peer_sampled_peak_gib")})
elif compiled and compiled.get("error") == "oom":
    rec["peer_compile_error"] = "oom"
elif compiled and compiled.get("error"):
    rec["peer_compile_error"] = compiled.get("message") or compiled["error"]
else:
    tail = compiled_line.strip()[:200]
    rec["peer_compile_error"] = f"exit status {compiled_status}, no result line" + (f": {tail}" if tail else "")
rec["ratio"] = ratio(peer)
rec["ratio_compile"] = ratio(compiled)
rec.update({k: v for k, v in ours.items() if k not in rec})  # loss_first/loss_last: ftune's
# The peers' other fields, named for their side ("peer_..." and "peer_compile_..."); what both peer
# runs share (versions, dtypes, attention) once, unprefixed.
both = ("autocast", "attn", "lora_dtype", "torch", "transformers", "peft")
for side, prefix in ((peer, "peer_"), (compiled if compiled and compiled.get("peer_tok_s") else {}, "peer_compile_")):
    for k, v in side.items():
        if k in ("gpu", "bench", "compile", "steps"):
            continue
        if k in both or (prefix == "peer_" and k == "error"):
            key = k
        elif k.startswith("peer_"):
            key = prefix + k[len("peer_"):]
        elif k.startswith("compile_"):
            key = "peer_" + k
        else:
            key = prefix + k
        rec.setdefault(key, v)
print(json.dumps(rec))
PY
  tail -1 "$out"
done
