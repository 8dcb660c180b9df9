# Pipeline parallelism on the GPU, two and four stages sharing one GPU (their hidden states and
# gradients go stage to stage through host memory and Gloo): LoRA and QLoRA train what one rank
# trains with the same micro-batches, within bf16's rounding, and the plan prints every stage.
# Skipped (visibly) without a GPU.
source "$(dirname "$0")/lib.bash" "$@"
if ! "$FTUNE" --version | grep >/dev/null "CUDA" || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "skip: no CUDA backend or no GPU here"; finish; exit 0
fi
make_model "$WORK/model"
head -64 "$ROOT/examples/quickstart/train.jsonl" >"$WORK/d.jsonl"
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/one" "  lr: 1e-3" "  grad_accum: 4" \
  "  device: cuda" "  precision: bf16" "  gradient_checkpointing: true" "lora:" "  dropout: 0.1" "dist:" "  timeout_s: 60"
sed -i 's/^  max_steps: 2$/  max_steps: 5/' "$WORK/r.yaml"
for m in lora qlora; do
  "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/one$m" --set train.method=$m 2>"$WORK/log1$m" \
    || { echo "FAIL 1 rank $m: $(tail -3 "$WORK/log1$m")"; fails=$((fails + 1)); }
  for p in 2 4; do
    "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/pp$p$m" --set train.method=$m --set dist.pipeline=$p \
      --set train.max_memory=4GiB --nproc-per-node $p 2>"$WORK/logp$p$m" \
      || { echo "FAIL pipeline $p $m: $(tail -3 "$WORK/logp$p$m")"; fails=$((fails + 1)); }
    # Each stage runs the same kernels on the same bf16 values as the whole model; the adapter's
    # gradient norm is summed per stage and then over the stages (its square's rounding, ~1e-7,
    # moves the clipping coefficient): losses within 1e-5, saved tensors within 1e-5.
    check "$m, pipeline of $p stages on the GPU = 1 rank" "$WORK/one$m" "$WORK/pp$p$m" 1e-5 1e-5
  done
done
"$FTUNE" plan "$WORK/r.yaml" --set dist.pipeline=2 --ranks 2 >"$WORK/plan" 2>&1 || true
grep -q "pipeline     2 stages: layers 0-1 (.* GiB), layers 2-3 (.* GiB); 1F1B bubble 20.0%" "$WORK/plan" \
  && echo "ok   ftune plan shows each stage" || { echo "FAIL plan: $(cat "$WORK/plan")"; fails=$((fails + 1)); }
# (checkpoints at steps 2, 4 and 5; the two newest are kept.) A pipeline's checkpoint holds the whole adapter's state (each stage's part summed into zeros):
# resumed under the pipeline it ends as the uninterrupted run, bit for bit, and on one rank too
# (the same kernels on the same values: bit for bit above).
"$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/ck" --set train.method=lora --set dist.pipeline=2 \
  --set train.max_memory=4GiB --set train.save_every=2 --nproc-per-node 2 2>"$WORK/logck" || { echo "FAIL checkpointed pipeline: $(tail -3 "$WORK/logck")"; fails=$((fails + 1)); }
check "pipeline of 2 with checkpoints = without" "$WORK/pp2lora" "$WORK/ck" 0 0
"$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/ckr" --set dist.pipeline=2 --set train.max_memory=4GiB \
  --resume "$WORK/ck/checkpoints/step-00000004" --nproc-per-node 2 2>"$WORK/logckr" \
  || { echo "FAIL pipeline resume: $(tail -3 "$WORK/logckr")"; fails=$((fails + 1)); }
check "pipeline of 2 resumed from step 4 = uninterrupted" "$WORK/ck" "$WORK/ckr" 0 0
"$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/ckr1" --set train.max_memory=4GiB --resume "$WORK/ck/checkpoints/step-00000004" \
  2>"$WORK/logckr1" || { echo "FAIL 1-rank resume: $(tail -3 "$WORK/logckr1")"; fails=$((fails + 1)); }
check "pipeline's checkpoint resumed on 1 rank = uninterrupted" "$WORK/ck" "$WORK/ckr1" 0 0
finish
