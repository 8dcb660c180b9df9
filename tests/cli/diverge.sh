# A run that diverges stops with the step named and a non-zero exit; metrics stay valid JSON;
# no adapter is written; a NaN in an initial adapter is refused as NaN base weights are.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
head -40 "$ROOT/examples/quickstart/train.jsonl" >"$WORK/d.jsonl"
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/out" "  max_steps: 6"
sed -i '/^  max_steps: 2$/d' "$WORK/r.yaml"
expect_fail_last diverged "step [0-9]+: training diverged: loss (NaN|infinity), gradient norm .* at lr 1e\+06.*output_dir is unchanged" \
  "$FTUNE" train "$WORK/r.yaml" --set train.lr=1e6 --set train.schedule=constant
if [ ! -e "$WORK/out/adapter_model.safetensors" ] && [ ! -e "$WORK/out/metrics.jsonl" ]; then
  echo "ok   no adapter written"; else echo "FAIL outputs written after divergence"; fails=$((fails + 1)); fi
if python3 -c "
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert rows and all(isinstance(r['loss'], float) for r in rows), rows
" "$WORK/out/.ftune-partial/metrics.jsonl"; then echo "ok   partial metrics are valid JSON"; else
  echo "FAIL partial metrics not valid JSON"; fails=$((fails + 1)); fi

# A NaN inside lora.init_adapter is named with its tensor and element.
"$FTUNE" train "$WORK/r.yaml" --overwrite --set train.max_steps=1 2>/dev/null
python3 - "$WORK/out/adapter_model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
name = sorted(k for k in h if k != '__metadata__')[0]
start = 8 + n + h[name]['data_offsets'][0]
b[start + 4 * 3:start + 4 * 4] = struct.pack('<f', float('nan'))
open(p, 'wb').write(b)
print(name)
PY
write_recipe "$WORK/r2.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/out2" "lora:" "  init_adapter: $WORK/out"
expect_fail nan-init-adapter "adapter_model\.safetensors: tensor '.*lora_[AB]\.weight' holds NaN at element 3" \
  "$FTUNE" train "$WORK/r2.yaml"
finish
