# ftune plan: the memory plan per category, tokens per step and an estimated step time, from the
# recipe and config.json alone; the categories add up, the methods differ where they must, and bad
# input is one line.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
printf '{"text": "a"}\n' >"$WORK/d.jsonl"
if "$FTUNE" --version | grep "CPU only" >/dev/null; then  # the plan is the CUDA backend's allocation, counted
  write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/out"
  expect_fail plan-cpu-only "this ftune was built without CUDA .*, so it cannot plan GPU memory" \
    "$FTUNE" plan "$WORK/r.yaml" --gpu H200
  echo "skip the plan's numbers: this ftune has no CUDA backend"
  finish
  exit 0
fi
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/out" "  grad_accum: 4"
plan_json() { "$FTUNE" plan "$WORK/r.yaml" --gpu H200 --json "$@"; }
python3 - "$(plan_json)" "$(plan_json --set train.method=full)" "$(plan_json --set train.method=full --set train.optimizer=adamw_8bit)" \
  "$(plan_json --set train.method=full --set train.optimizer_offload=true --set train.device=cuda)" <<'PY' && echo "ok   plans add up and differ by method" || { echo "FAIL plan numbers"; fails=$((fails + 1)); }
import json, sys
lora, full, full8, off = (json.loads(a) for a in sys.argv[1:])
for p in (lora, full, full8, off):
    assert sum(p["device"].values()) == p["device_total"], p
    assert p["tokens_per_step"] == 2 * 32 * 4, p   # micro-batch x max_seq_len x grad_accum
    assert p["fits"] and p["sm"] == 90 and p["step_seconds"] > 0, p
# The tiny model: 512 x 64 embedding, 2 layers of hidden 64 / intermediate 128, untied head.
params = full["device"]["gradients"] // 4
assert lora["device"]["gradients"] < params, (lora, params)           # only the adapter's
assert full["device"]["optimizer"] >= 3 * 4 * params, full            # fp32 masters, m and v
assert full8["device"]["optimizer"] < full["device"]["optimizer"], full8
assert off["device"]["optimizer"] == 0 and off["host"] == 3 * 4 * params, off
assert full["flops_per_step"] > lora["flops_per_step"], (full, lora)  # 6N against 4N
PY
"$FTUNE" plan "$WORK/r.yaml" --gpu t4 >"$WORK/t4.txt" 2>&1
grep -q "^GPU          T4 (sm_75" "$WORK/t4.txt" && grep -q "^  activations " "$WORK/t4.txt" && grep -q "^fits         yes" "$WORK/t4.txt" \
  && echo "ok   text plan for a T4" || { echo "FAIL text plan"; cat "$WORK/t4.txt"; fails=$((fails + 1)); }
# A 7B full fine-tune on a T4 does not fit: the plan says so, with what would.
mkdir -p "$WORK/m7"
printf '{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32, "num_hidden_layers": 32, "vocab_size": 32000, "rms_norm_eps": 1e-05, "max_position_embeddings": 4096}\n' >"$WORK/m7/config.json"
"$FTUNE" plan "$WORK/r.yaml" --gpu t4 --set model="$WORK/m7" --set train.method=full >"$WORK/t4-7b.txt" 2>&1
grep -q "^fits         no: the model needs .* GiB of device memory" "$WORK/t4-7b.txt" && echo "ok   7B on a T4 does not fit" || {
  echo "FAIL 7B on a T4"; cat "$WORK/t4-7b.txt"; fails=$((fails + 1)); }
# FSDP-QLoRA: the seed's 70B QLoRA job on eight T4s capped at 15 GiB fits with dist.zero 3 (each rank
# 1/8 of the frozen base) and not with the whole base on every rank.
mkdir -p "$WORK/m70"
printf '{"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 80, "vocab_size": 32000, "rms_norm_eps": 1e-05, "max_position_embeddings": 4096}\n' >"$WORK/m70/config.json"
plan70() { "$FTUNE" plan "$WORK/r.yaml" --gpu t4 --ranks 8 --set model="$WORK/m70" --set train.method=qlora \
  --set train.device=cuda --set train.precision=fp16 --set train.gradient_checkpointing=true --set train.micro_batch_size=1 \
  --set train.grad_accum=1 --set data.max_seq_len=2048 --set train.optimizer=paged_adamw_8bit --set train.max_memory=15GiB "$@" 2>&1; }
plan70 --set dist.zero=3 >"$WORK/z3.txt"; plan70 >"$WORK/z0.txt"
grep -q "^fits         yes" "$WORK/z3.txt" && grep -q "dist.zero 3: 1/8 of the frozen base" "$WORK/z3.txt" \
  && grep -q "^fits         no" "$WORK/z0.txt" && echo "ok   70B QLoRA fits eight 15 GiB T4s with dist.zero 3, not without" \
  || { echo "FAIL 70B plans:"; cat "$WORK/z3.txt" "$WORK/z0.txt"; fails=$((fails + 1)); }
# --longest: the longest rows that fit, found by the plan; one token more does not fit.
n=$(plan70 --set dist.zero=3 --longest --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["longest_seq"])')
if [ "${n:-0}" -gt 2048 ] && plan70 --set dist.zero=3 --set data.max_seq_len=$n | grep -q "^fits         yes" \
  && plan70 --set dist.zero=3 --set data.max_seq_len=$((n + 1)) | grep -q "^fits         no"; then
  echo "ok   --longest: $n tokens fit, $((n + 1)) do not"
else
  echo "FAIL --longest gave '$n'"; fails=$((fails + 1))
fi
# The host's memory: offloaded layer inputs (81 x 16 KiB a token at the 70B shape) outgrow a host
# before the GPU. With --host-memory the plan says so, and --longest gives the length the host allows
# beside what the GPU alone would fit; one token more than the host allows does not fit.
plan70lc() { "$FTUNE" plan "$WORK/r.yaml" --gpu h200 --set model="$WORK/m70" --set train.method=qlora --set train.device=cuda \
  --set train.gradient_checkpointing=true --set train.offload_activations=true --set train.micro_batch_size=1 \
  --set train.grad_accum=1 --set train.optimizer=paged_adamw_8bit --set train.max_memory=80GiB "$@" 2>&1; }
python3 - "$(plan70lc --host-memory 100 --longest --json)" "$(plan70lc --longest --json)" <<'PY' >"$WORK/host.txt" && echo "ok   --longest under a host's memory" || { echo "FAIL host-limited --longest"; cat "$WORK/host.txt"; fails=$((fails + 1)); }
import json, sys
host, free = (json.loads(a) for a in sys.argv[1:])
assert host["host_available"] == 100 * 2**30 and free["host_available"] == 0, (host, free)
assert free["longest_seq"] == free["longest_seq_gpu"] == host["longest_seq_gpu"], (host, free)
assert 2048 < host["longest_seq"] < host["longest_seq_gpu"], host   # the host decides
print(host["longest_seq"])
PY
n=$(tail -1 "$WORK/host.txt")
if plan70lc --host-memory 100 --set data.max_seq_len=$n | grep -q "^host memory .*, of 100.00 GiB available" \
  && plan70lc --host-memory 100 --set data.max_seq_len=$n | grep -q "^fits         yes" \
  && plan70lc --host-memory 100 --set data.max_seq_len=$((n + 1)) \
     | grep -q "^fits         no: the run needs .* GiB of host memory .* but the host has 100.00 GiB available"; then
  echo "ok   $n tokens fit a 100 GiB host, $((n + 1)) do not"
else
  echo "FAIL host memory at $n tokens"; plan70lc --host-memory 100 --set data.max_seq_len=$((n + 1)); fails=$((fails + 1))
fi
expect_fail plan-bad-host-memory "--host-memory is the host's memory in GiB, a number above 0 \(got -2\)" \
  "$FTUNE" plan "$WORK/r.yaml" --gpu h200 --host-memory -2
# train.max_memory: the plan is held to the cap (the cap shows as the total's bound), and a cap over
# what the GPU has is refused.
"$FTUNE" plan "$WORK/r.yaml" --gpu t4 --set train.device=cuda --set train.max_memory=6GiB >"$WORK/t4-cap.txt" 2>&1
grep -q "GiB  of 6.0; the CUDA context" "$WORK/t4-cap.txt" && echo "ok   the plan is bounded by train.max_memory" || {
  echo "FAIL cap in plan"; cat "$WORK/t4-cap.txt"; fails=$((fails + 1)); }
expect_fail plan-cap-over-gpu "train\.max_memory: 40\.00 GiB is more than the 15\.00 GiB a T4 has" \
  "$FTUNE" plan "$WORK/r.yaml" --gpu t4 --set train.device=cuda --set train.max_memory=40GiB
expect_fail plan-unknown-gpu "--gpu 'v100': not a GPU ftune knows; one of: T4, " "$FTUNE" plan "$WORK/r.yaml" --gpu v100
expect_fail plan-bad-key "train\.optimizer_offload is for train\.method full" \
  "$FTUNE" plan "$WORK/r.yaml" --gpu h100 --set train.optimizer_offload=true
expect_fail plan-no-model "config\.json" "$FTUNE" plan "$WORK/r.yaml" --gpu h100 --set model="$WORK/none"
[ ! -e "$WORK/out" ] && echo "ok   plan writes nothing" || { echo "FAIL plan wrote output_dir"; fails=$((fails + 1)); }
finish
