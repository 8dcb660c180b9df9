# ftune merge and train.save_merged: base + adapter as one Hugging Face model, with the logits of
# base + adapter; bad inputs are one-line errors and write nothing.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
head -40 "$ROOT/examples/quickstart/train.jsonl" >"$WORK/d.jsonl"
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/out" "  lr: 1e-2" "  save_merged: true"
sed -i 's/^  max_steps: 2$/  max_steps: 6/' "$WORK/r.yaml"
"$FTUNE" train "$WORK/r.yaml" 2>/dev/null
for f in merged/config.json merged/model.safetensors merged/tokenizer.model adapter_model.safetensors; do
  [ -s "$WORK/out/$f" ] && echo "ok   $f" || { echo "FAIL $f missing"; fails=$((fails + 1)); }
done
printf '{"input_ids": [1, 5, 9, 13, 17, 21, 25, 29]}\n{"input_ids": [2, 6, 10, 14, 18, 22, 26, 30]}\n' >"$WORK/rows.jsonl"
"$FTUNE" logits --model "$WORK/model" --adapter "$WORK/out" --input "$WORK/rows.jsonl" --out "$WORK/a.safetensors" 2>/dev/null
"$FTUNE" logits --model "$WORK/out/merged" --input "$WORK/rows.jsonl" --out "$WORK/b.safetensors" 2>/dev/null
python3 - "$WORK/a.safetensors" "$WORK/b.safetensors" <<'PY' && echo "ok   merged logits = base + adapter logits" || { echo "FAIL merged logits"; fails=$((fails + 1)); }
import json, math, struct, sys
def logits(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
    s, e = h['logits']['data_offsets']
    return struct.unpack('<%df' % ((e - s) // 4), b[8 + n + s:8 + n + e])
a, b = logits(sys.argv[1]), logits(sys.argv[2])
err = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b))) / math.sqrt(sum(x * x for x in a))
assert err < 1e-5, err  # fp32 both ways: the merge rounds once more than the separate branch
PY
# ftune merge writes the same model as train.save_merged.
"$FTUNE" merge --model "$WORK/model" --adapter "$WORK/out" --out "$WORK/m2" 2>/dev/null
cmp -s "$WORK/m2/model.safetensors" "$WORK/out/merged/model.safetensors" && echo "ok   ftune merge = train.save_merged" || {
  echo "FAIL merge outputs differ"; fails=$((fails + 1)); }
expect_fail merge-exists "m2: output_dir is not empty" "$FTUNE" merge --model "$WORK/model" --adapter "$WORK/out" --out "$WORK/m2"
expect_fail merge-into-model "output_dir is the model directory" \
  "$FTUNE" merge --model "$WORK/model" --adapter "$WORK/out" --out "$WORK/model" --overwrite
expect_fail merge-other-model "adapter_model\.safetensors: tensor .* has shape" \
  "$FTUNE" merge --model "$ROOT/tests/fixtures/hf/mha_untied/model" --adapter "$WORK/out" --out "$WORK/m3"
[ ! -e "$WORK/m3" ] && echo "ok   nothing written by the refused merge" || { echo "FAIL m3 written"; fails=$((fails + 1)); }
expect_fail merged-full "train\.save_merged folds an adapter into the base" \
  "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/o4" --set train.method=full
finish
