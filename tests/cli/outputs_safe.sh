# Nothing the user owns is replaced unless asked, and a run's outputs are all old or all new.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
head -40 "$ROOT/examples/quickstart/train.jsonl" >"$WORK/d.jsonl"
sum() { (cd "$1" && sha256sum adapter_config.json adapter_model.safetensors config.yaml metrics.jsonl); }

# `ftune logits --out`: never over the model's own weights, an existing file only with --overwrite.
printf '{"input_ids": [1, 5, 9, 13]}\n{"input_ids": [2, 6, 10, 14]}\n' >"$WORK/rows.jsonl"
before=$(sha256sum "$WORK/model/model.safetensors")
expect_fail logits-over-model "would replace a file of .*model, which this command reads" \
  "$FTUNE" logits --model "$WORK/model" --input "$WORK/rows.jsonl" --out "$WORK/model/model.safetensors" --overwrite
[ "$(sha256sum "$WORK/model/model.safetensors")" = "$before" ] && echo "ok   model weights untouched" || {
  echo "FAIL model weights changed"; fails=$((fails + 1)); }
echo "mine" >"$WORK/logits.safetensors"
expect_fail logits-exists "logits\.safetensors: exists \(pass --overwrite" \
  "$FTUNE" logits --model "$WORK/model" --input "$WORK/rows.jsonl" --out "$WORK/logits.safetensors"
[ "$(cat "$WORK/logits.safetensors")" = mine ] && echo "ok   existing --out untouched" || {
  echo "FAIL existing --out changed"; fails=$((fails + 1)); }
"$FTUNE" logits --model "$WORK/model" --input "$WORK/rows.jsonl" --out "$WORK/logits.safetensors" --overwrite 2>/dev/null
[ "$(head -c 4 "$WORK/logits.safetensors" | tr -d '\0')" != mine ] && echo "ok   --overwrite replaces --out" || {
  echo "FAIL --overwrite did not replace"; fails=$((fails + 1)); }

# output_dir equal to the model directory is refused, even with --overwrite; nothing written.
write_recipe "$WORK/same.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/model"
files=$(ls -A "$WORK/model")
expect_fail output-is-model "output_dir is the model directory" "$FTUNE" train "$WORK/same.yaml" --overwrite
[ "$(ls -A "$WORK/model")" = "$files" ] && echo "ok   model directory unchanged" || {
  echo "FAIL model directory changed"; fails=$((fails + 1)); }

# A failed start writes nothing, so the rerun needs no --overwrite.
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/out"
if "$FTUNE" train "$WORK/r.yaml" --set train.device=cuda >/dev/null 2>&1; then
  echo "skip failed start: this machine has a GPU, so device=cuda starts"
  rm -rf "$WORK/out"
elif [ -e "$WORK/out" ]; then
  echo "FAIL a failed start left $(ls -A "$WORK/out")"; fails=$((fails + 1))
else
  echo "ok   failed start left nothing"
fi
"$FTUNE" train "$WORK/r.yaml" 2>/dev/null && echo "ok   rerun without --overwrite" || {
  echo "FAIL rerun after failed start"; fails=$((fails + 1)); }
old=$(sum "$WORK/out")

# An --overwrite rerun that is killed mid-run leaves the previous run's files, all of them, as they were.
"$FTUNE" train "$WORK/r.yaml" --overwrite --set train.max_steps=100000 >/dev/null 2>&1 &
pid=$!
for _ in $(seq 1 200); do
  [ -s "$WORK/out/.ftune-partial/metrics.jsonl" ] && break
  sleep 0.05
done
kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
if [ -s "$WORK/out/.ftune-partial/metrics.jsonl" ] && [ "$(sum "$WORK/out")" = "$old" ]; then
  echo "ok   killed rerun left the old outputs intact"; else echo "FAIL killed rerun changed the outputs"; fails=$((fails + 1)); fi
# The next run clears the stale staging directory and replaces every file at once.
"$FTUNE" train "$WORK/r.yaml" --overwrite --set train.max_steps=3 2>/dev/null
if [ ! -e "$WORK/out/.ftune-partial" ] && [ "$(wc -l <"$WORK/out/metrics.jsonl")" -eq 3 ] && grep -q "max_steps: 3" "$WORK/out/config.yaml"; then
  echo "ok   completed rerun replaced all outputs"; else echo "FAIL completed rerun"; fails=$((fails + 1)); fi
# A directory holding only a stale staging directory counts as empty.
mkdir -p "$WORK/out2/.ftune-partial" && touch "$WORK/out2/.ftune-partial/metrics.jsonl"
write_recipe "$WORK/r2.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/out2"
"$FTUNE" train "$WORK/r2.yaml" 2>/dev/null && [ -s "$WORK/out2/adapter_model.safetensors" ] && echo "ok   stale staging ignored" || {
  echo "FAIL stale staging"; fails=$((fails + 1)); }

# init-model writes a complete model or nothing.
expect_fail init-model-vocab0 "--vocab-size: must be at least 1, found 0" "$FTUNE" init-model --random "$WORK/m0" --vocab-size 0
[ ! -e "$WORK/m0" ] && echo "ok   init-model wrote nothing" || { echo "FAIL init-model left $WORK/m0"; fails=$((fails + 1)); }
finish
