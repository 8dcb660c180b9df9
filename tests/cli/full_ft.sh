# train.method full: every weight trains on the CPU and output_dir receives a Hugging Face model
# directory in the base's dtype that ftune (and transformers) load; bad combinations name the keys.
source "$(dirname "$0")/lib.bash" "$@"
"$FTUNE" init-model --preset tiny --vocab-size 512 --random "$WORK/model" --tokenizer "$ROOT/examples/quickstart" \
  --seed 3 --dtype bfloat16 2>/dev/null
head -120 "$ROOT/examples/quickstart/train.jsonl" >"$WORK/d.jsonl"
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/out" "  method: full" "  lr: 1e-3" "  weight_decay: 0.01"
sed -i 's/^  max_steps: 2$/  max_steps: 12/' "$WORK/r.yaml"
if "$FTUNE" train "$WORK/r.yaml" 2>"$WORK/log"; then echo "ok   full fine-tuning ran"; else
  echo "FAIL full fine-tuning: $(tail -3 "$WORK/log")"; fails=$((fails + 1)); fi
for f in config.json tokenizer.model model.safetensors metrics.jsonl config.yaml; do
  [ -s "$WORK/out/$f" ] && echo "ok   $f written" || { echo "FAIL $f missing"; fails=$((fails + 1)); }
done
[ ! -e "$WORK/out/adapter_config.json" ] && echo "ok   no adapter for full fine-tuning" || { echo "FAIL adapter written"; fails=$((fails + 1)); }
cmp -s "$WORK/model/config.json" "$WORK/out/config.json" && echo "ok   config.json as the base has it" || {
  echo "FAIL config.json differs"; fails=$((fails + 1)); }
python3 - "$WORK/out/metrics.jsonl" <<'PY' && echo "ok   loss fell" || { echo "FAIL loss did not fall"; fails=$((fails + 1)); }
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 12 and rows[-1]["loss"] < rows[0]["loss"] - 0.5, [r["loss"] for r in rows]
PY
insp=$("$FTUNE" inspect "$WORK/out" 2>&1)
if printf '%s' "$insp" | grep >/dev/null "BF16      39 tensors" && printf '%s' "$insp" | grep >/dev/null "matches config.json"; then
  echo "ok   saved model: 39 BF16 tensors, shapes as config.json"; else echo "FAIL inspect: $insp"; fails=$((fails + 1)); fi
# The weights changed, and the saved model is a model ftune can read, evaluate and train again.
cmp -s "$WORK/model/model.safetensors" "$WORK/out/model.safetensors" && { echo "FAIL weights unchanged"; fails=$((fails + 1)); } || echo "ok   weights changed"
printf '{"input_ids": [1, 5, 9, 13, 17, 21]}\n' >"$WORK/rows.jsonl"
"$FTUNE" logits --model "$WORK/out" --input "$WORK/rows.jsonl" --out "$WORK/logits.safetensors" 2>/dev/null \
  && echo "ok   logits of the saved model" || { echo "FAIL logits of the saved model"; fails=$((fails + 1)); }
write_recipe "$WORK/r2.yaml" "$WORK/out" "$WORK/d.jsonl" "$WORK/out2" "  method: full"
"$FTUNE" train "$WORK/r2.yaml" 2>/dev/null && [ -s "$WORK/out2/model.safetensors" ] && echo "ok   saved model trains again" || {
  echo "FAIL saved model as a base"; fails=$((fails + 1)); }

# 8-bit moments (one bitsandbytes-style state per tensor) train too.
"$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/out8" --set train.optimizer=adamw_8bit 2>/dev/null
python3 - "$WORK/out8/metrics.jsonl" <<'PY' && echo "ok   adamw_8bit full fine-tuning: loss fell" || { echo "FAIL adamw_8bit full"; fails=$((fails + 1)); }
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 12 and rows[-1]["loss"] < rows[0]["loss"] - 0.5, [r["loss"] for r in rows]
PY

# Bad combinations: one line naming the keys, nothing written.
expect_fail full-with-lora-key "lora\.r is a LoRA setting, but train\.method is full" \
  "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/bad1" --set lora.r=16
expect_fail full-paged "train\.optimizer=paged_adamw_8bit with train\.method=full is not available" \
  "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/bad2" --set train.optimizer=paged_adamw_8bit
expect_fail qlora-offload "train\.optimizer_offload is for train\.method full" \
  "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/bad3" --set train.method=qlora --set train.optimizer_offload=true
expect_fail offload-8bit "train\.optimizer_offload keeps fp32 AdamW moments in host memory: set train\.optimizer to adamw" \
  "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/bad4" --set train.device=cuda --set train.optimizer_offload=true \
  --set train.optimizer=adamw_8bit
expect_fail offload-cpu "train\.optimizer_offload moves the optimizer off the GPU, but train\.device is cpu" \
  "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/bad5" --set train.optimizer_offload=true
expect_fail full-into-base "output_dir is the model directory" \
  "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/model" --overwrite
for d in bad1 bad2 bad3 bad4 bad5; do [ -e "$WORK/$d" ] && { echo "FAIL $d written"; fails=$((fails + 1)); }; done
[ -s "$WORK/model/model.safetensors" ] && cmp -s "$WORK/model/config.json" "$WORK/out/config.json" && echo "ok   the base is intact" || {
  echo "FAIL base changed"; fails=$((fails + 1)); }
echo "ok   nothing written by the refused runs"
finish
