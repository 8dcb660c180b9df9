# FSDP-QLoRA on the GPU (dist.zero 3 with an adapter): the frozen base is sharded over the ranks as
# the very bytes an unsharded model holds (NF4 codes and scales, or bf16 with LoRA) and a unit is
# gathered just before it runs, so 2 and 4 ranks train bit for bit what the same ranks train data
# parallel with the whole base each, whichever way the gathers travel (CUDA IPC between ranks that
# share the GPU, or host memory); checkpoints resume to the uninterrupted end; validation runs with
# uneven rows (its collective forwards); train.max_memory holds every rank. Skipped (visibly) without a GPU.
source "$(dirname "$0")/lib.bash" "$@"
if ! "$FTUNE" --version | grep >/dev/null "CUDA" || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "skip: no CUDA backend or no GPU here"; finish; exit 0
fi
make_model "$WORK/model"
head -72 "$ROOT/examples/quickstart/train.jsonl" >"$WORK/d.jsonl"
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/one" "  method: qlora" "  lr: 1e-3" "  eval_every: 2" \
  "  device: cuda" "  precision: bf16" "  gradient_checkpointing: true" "  optimizer: paged_adamw_8bit" \
  "lora:" "  dropout: 0.1" "dist:" "  timeout_s: 60"
sed -i 's/^  max_steps: 2$/  max_steps: 4/; s/^data:$/data:\n  val_fraction: 0.1/' "$WORK/r.yaml"
run() {  # run NAME ARGS...: one training, its log in $WORK/log.NAME
  local name=$1; shift
  "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/$name" "$@" 2>"$WORK/log.$name" \
    || { echo "FAIL $name: $(tail -3 "$WORK/log.$name")"; fails=$((fails + 1)); }
}
for n in 2 4; do
  run dp$n --nproc-per-node $n
  run z$n --set dist.zero=3 --set train.max_memory=3GiB --nproc-per-node $n
  check "QLoRA, dist.zero 3 on $n ranks = data parallel on $n ranks (bit for bit)" "$WORK/dp$n" "$WORK/z$n" 0 0
done
FTUNE_NO_CUDA_IPC=1 run zh2 --set dist.zero=3 --nproc-per-node 2
check "QLoRA, dist.zero 3 gathered through host memory = data parallel" "$WORK/dp2" "$WORK/zh2" 0 0
grep -q "ZeRO stage 3 over the frozen base" "$WORK/log.z2" && grep -q "the frozen base sharded over 2 ranks, gathered by cuda-ipc" "$WORK/log.z2" \
  && grep -q "gathered by host-staged" "$WORK/log.zh2" && echo "ok   the logs name the sharded base and its transport" \
  || { echo "FAIL log: $(grep 'running on' "$WORK/log.z2" "$WORK/log.zh2")"; fails=$((fails + 1)); }
# Against one rank with both micro-batches: the ranks' adapter gradients are summed on the host in
# another order than one rank's accumulation in a GEMM's epilogue (and the 8-bit moments round on
# those sums): losses within 1e-3, saved tensors within 2e-3 (bf16 compute, as tests/cli/gpu_zero3.sh).
run one --set train.grad_accum=2
check "QLoRA, dist.zero 3 on 2 ranks = 1 rank x 2 micro-batches (bf16)" "$WORK/one" "$WORK/z2" 1e-3 2e-3
# LoRA: the bf16 base itself in pieces.
run ldp --set train.method=lora --nproc-per-node 2
run lz --set train.method=lora --set dist.zero=3 --nproc-per-node 2
check "LoRA, dist.zero 3 on 2 ranks = data parallel (bit for bit)" "$WORK/ldp" "$WORK/lz" 0 0
# A checkpoint at step 2, resumed under dist.zero 3, ends as the uninterrupted run.
run ck --set dist.zero=3 --set train.save_every=2 --nproc-per-node 2
check "dist.zero 3 with checkpoints = without" "$WORK/z2" "$WORK/ck" 0 0
"$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/ckr" --set dist.zero=3 --resume "$WORK/ck/checkpoints/step-00000002" \
  --nproc-per-node 2 2>"$WORK/log.ckr" || { echo "FAIL resume: $(tail -3 "$WORK/log.ckr")"; fails=$((fails + 1)); }
check "dist.zero 3 resumed from step 2 = uninterrupted" "$WORK/ck" "$WORK/ckr" 0 0
rc=0
"$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/cap" --set dist.zero=3 --set train.max_memory=300MiB \
  --nproc-per-node 2 2>"$WORK/log.cap" || rc=$?
judge cap "^ftune: error: .*train\.max_memory: (the model needs|.* is less than)" "$rc" "$(grep -m1 'ftune: error' "$WORK/log.cap")"
[ ! -e "$WORK/cap" ] && echo "ok   nothing written under a refused cap" || { echo "FAIL cap wrote output"; fails=$((fails + 1)); }
finish
