# Bad model directories: each a one-line error naming the file or tensor, non-zero exit.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/good"
echo '{"text": "hello world, this is a row"}' >"$WORK/data.jsonl"

# Missing config.json
mkdir -p "$WORK/noconfig" && cp "$WORK/good/model.safetensors" "$WORK/noconfig/"
write_recipe "$WORK/r1.yaml" "$WORK/noconfig" "$WORK/data.jsonl" "$WORK/out1"
expect_fail missing-config 'noconfig/config\.json: not found' "$FTUNE" train "$WORK/r1.yaml"

# Truncated safetensors
cp -r "$WORK/good" "$WORK/trunc"
size=$(stat -c %s "$WORK/trunc/model.safetensors")
truncate -s $((size - 100)) "$WORK/trunc/model.safetensors"
write_recipe "$WORK/r2.yaml" "$WORK/trunc" "$WORK/data.jsonl" "$WORK/out2"
expect_fail truncated-safetensors 'trunc/model\.safetensors: .*' "$FTUNE" train "$WORK/r2.yaml"

# Corrupted header (garbage where the JSON starts)
cp -r "$WORK/good" "$WORK/corrupt"
printf 'XXXXXXXX' | dd of="$WORK/corrupt/model.safetensors" bs=1 seek=8 conv=notrunc 2>/dev/null
write_recipe "$WORK/r3.yaml" "$WORK/corrupt" "$WORK/data.jsonl" "$WORK/out3"
expect_fail corrupt-safetensors 'corrupt/model\.safetensors: .*' "$FTUNE" train "$WORK/r3.yaml"

# A tensor missing: rewrite the file without model.norm.weight (python3, stdlib only)
cp -r "$WORK/good" "$WORK/missing"
python3 - "$WORK/missing/model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]
raw = open(p, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n]); data = raw[8 + n:]
drop = "model.norm.weight"
keep = sorted((k for k in hdr if k not in ("__metadata__", drop)), key=lambda k: hdr[k]["data_offsets"][0])
out, off, new = b"", 0, {}
for k in keep:
    b, e = hdr[k]["data_offsets"]
    new[k] = {"dtype": hdr[k]["dtype"], "shape": hdr[k]["shape"], "data_offsets": [off, off + e - b]}
    out += data[b:e]; off += e - b
h = json.dumps(new).encode(); h += b" " * (-len(h) % 8)
open(p, "wb").write(struct.pack("<Q", len(h)) + h + out)
PY
write_recipe "$WORK/r4.yaml" "$WORK/missing" "$WORK/data.jsonl" "$WORK/out4"
expect_fail missing-tensor "tensor 'model\.norm\.weight' is missing" "$FTUNE" train "$WORK/r4.yaml"

# Shapes that disagree with config.json
cp -r "$WORK/good" "$WORK/shape"
sed -i 's/"intermediate_size": 352/"intermediate_size": 360/' "$WORK/shape/config.json"
grep -q '"intermediate_size": 360' "$WORK/shape/config.json"
write_recipe "$WORK/r5.yaml" "$WORK/shape" "$WORK/data.jsonl" "$WORK/out5"
expect_fail shape-mismatch "tensor 'model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight' has shape .* config\.json implies" \
  "$FTUNE" train "$WORK/r5.yaml"

# An architecture that is not Llama
cp -r "$WORK/good" "$WORK/arch"
sed -i 's/LlamaForCausalLM/MistralForCausalLM/; s/"model_type": "llama"/"model_type": "mistral"/' "$WORK/arch/config.json"
write_recipe "$WORK/r6.yaml" "$WORK/arch" "$WORK/data.jsonl" "$WORK/out6"
expect_fail other-architecture "MistralForCausalLM" "$FTUNE" train "$WORK/r6.yaml"

# A NaN inside a weight (the error names the tensor and the element; the run's progress lines
# before it are normal output, so only the error line is checked here)
cp -r "$WORK/good" "$WORK/nan"
python3 - "$WORK/nan/model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]
raw = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
t = hdr["model.layers.1.self_attn.v_proj.weight"]
assert t["dtype"] == "F32", t["dtype"]
at = 8 + n + t["data_offsets"][0] + 4 * 5
raw[at:at + 4] = struct.pack("<f", float("nan"))
open(p, "wb").write(raw)
PY
write_recipe "$WORK/r7.yaml" "$WORK/nan" "$WORK/data.jsonl" "$WORK/out7"
rc=0
err=$("$FTUNE" train "$WORK/r7.yaml" 2>&1 >/dev/null) || rc=$?
if [ "$rc" -ne 0 ] && [ "$(printf '%s\n' "$err" | grep -c 'error')" -eq 1 ] &&
  printf '%s' "$err" | grep -E >/dev/null "error: .*nan/model\.safetensors: tensor 'model\.layers\.1\.self_attn\.v_proj\.weight' holds NaN at element 5"; then
  echo "ok   nan-weight: $(printf '%s\n' "$err" | grep error)"
else
  echo "FAIL nan-weight (exit $rc): $err"; fails=$((fails + 1))
fi

# Nothing was written for any failed run
for i in 1 2 3 4 5 6 7; do
  if [ -e "$WORK/out$i/adapter_model.safetensors" ]; then echo "FAIL out$i has an adapter"; fails=$((fails + 1)); fi
done
finish
