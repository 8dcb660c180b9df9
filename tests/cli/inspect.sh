# `ftune inspect` on a model directory, an adapter, a sharded checkpoint and a bad path.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
check() {  # check NAME REGEX TEXT
  if printf '%s' "$3" | grep -E >/dev/null -- "$2"; then echo "ok   $1"; else echo "FAIL $1: /$2/ not in:"; printf '%s\n' "$3"; fails=$((fails + 1)); fi
}
out=$("$FTUNE" inspect "$WORK/model")
check model-arch "layers 4  hidden 128  intermediate 352  heads 4  kv_heads 2  head_dim 32" "$out"
check model-count "tensors 39 \([0-9]+ elements, matches config\.json\)" "$out"
check model-tokenizer "tokenizer files: tokenizer\.model" "$out"
out=$("$FTUNE" inspect "$ROOT/tests/fixtures/hf/rslora_subset/adapter")
check adapter-r "r 8  lora_alpha 4  scaling 1\.414 \(rsLoRA\)" "$out"
check adapter-targets "target modules: down_proj, q_proj, v_proj" "$out"
check adapter-tensors "tensors 12 .* over 2 layers" "$out"
out=$("$FTUNE" inspect "$WORK/model/model.safetensors")
check file "model\.norm\.weight +F32 +\[128\]" "$out"
expect_fail not-a-model "neither a model .* nor a PEFT adapter" "$FTUNE" inspect "$WORK"
expect_fail no-such-path "nope: no such file or directory" "$FTUNE" inspect "$WORK/nope"
finish
