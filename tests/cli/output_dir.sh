# A non-empty output_dir is refused without --overwrite and left untouched; with it, trained.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
printf '{"text": "the fox lives near the river"}\n{"text": "one plus two is three"}\n' >"$WORK/d.jsonl"
mkdir -p "$WORK/out"
echo "precious" >"$WORK/out/notes.txt"
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/out"
expect_fail non-empty-output "out: output_dir is not empty .*--overwrite" "$FTUNE" train "$WORK/r.yaml"
if [ "$(cat "$WORK/out/notes.txt")" = precious ] && [ "$(ls "$WORK/out" | wc -l)" -eq 1 ]; then
  echo "ok   output_dir untouched"; else echo "FAIL output_dir changed"; fails=$((fails + 1)); fi
"$FTUNE" train "$WORK/r.yaml" --overwrite 2>/dev/null
for f in adapter_config.json adapter_model.safetensors metrics.jsonl config.yaml notes.txt; do
  if [ -s "$WORK/out/$f" ]; then echo "ok   $f present"; else echo "FAIL $f missing"; fails=$((fails + 1)); fi
done
# Unknown key, with the closest valid key suggested.
expect_fail unknown-key "unknown key 'lora\.rank'.*'lora\.r'" "$FTUNE" train "$WORK/r.yaml" --set lora.rank=4
finish
