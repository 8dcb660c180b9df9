# What used to surprise a new user: silent adapter settings, an unexplained empty dataset, a wrong
# validation count, a FIFO that blocks, and commands that accepted nonsense.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
head -40 "$ROOT/examples/quickstart/train.jsonl" >"$WORK/d.jsonl"

# lora.init_adapter: its r/alpha/targets are taken (and written to config.yaml) unless the recipe
# sets a different value, which is refused naming both.
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/a1" "lora:" "  r: 4" "  alpha: 12" "  target_modules: [q_proj, v_proj]"
"$FTUNE" train "$WORK/r.yaml" 2>/dev/null
write_recipe "$WORK/r2.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/a2" "lora:" "  init_adapter: $WORK/a1"
if "$FTUNE" train "$WORK/r2.yaml" 2>/dev/null && grep -q "^  r: 4$" "$WORK/a2/config.yaml" && grep -q "^  alpha: 12$" "$WORK/a2/config.yaml" \
   && grep -q "target_modules: \[q_proj, v_proj\]" "$WORK/a2/config.yaml" && grep -q '"r": 4' "$WORK/a2/adapter_config.json"; then
  echo "ok   init adapter's settings taken and written"; else echo "FAIL init adapter settings: $(cat "$WORK/a2/config.yaml")"; fails=$((fails + 1)); fi
expect_fail init-adapter-r "adapter_config\.json: r is 4 but the recipe sets lora\.r = 16" \
  "$FTUNE" train "$WORK/r2.yaml" --overwrite --set lora.r=16
expect_fail init-adapter-targets "target_modules is \[q_proj, v_proj\] but the recipe sets lora\.target_modules = \[k_proj, q_proj\]" \
  "$FTUNE" train "$WORK/r2.yaml" --overwrite --set lora.target_modules=q_proj,k_proj

# A template prompt longer than max_seq_len: say so, and by how much.
printf '{"instruction": "Say something about the fox and the river today", "output": "It is red."}\n' >"$WORK/alp.jsonl"
write_recipe "$WORK/r3.yaml" "$WORK/model" "$WORK/alp.jsonl" "$WORK/a3"
sed -i 's/^  max_seq_len: 32$/  max_seq_len: 16/' "$WORK/r3.yaml"
expect_fail prompt-too-long "prompt alone \(template 'alpaca' included\) is at least as long as data\.max_seq_len=16.*the shortest prompt takes [0-9]+ tokens, [0-9]+ more than fit \(set data\.max_seq_len to at least [0-9]+" \
  "$FTUNE" train "$WORK/r3.yaml"

# data.val_fraction: the validation summary counts the held-out examples.
write_recipe "$WORK/r4.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/a4"
sed -i 's/^  max_seq_len: 32$/  max_seq_len: 32\n  val_fraction: 0.25/' "$WORK/r4.yaml"
out=$("$FTUNE" train "$WORK/r4.yaml" 2>&1)
n_train=$(printf '%s\n' "$out" | sed -n 's/^ftune: train: \([0-9]*\) examples.*/\1/p')
n_val=$(printf '%s\n' "$out" | sed -n 's/^ftune: validation: \([0-9]*\) examples.*/\1/p')
if [ -n "$n_val" ] && [ "$n_val" -gt 0 ] && [ $((n_train + n_val)) -eq 40 ]; then
  echo "ok   validation summary counts $n_val held-out examples (+ $n_train train)"; else
  echo "FAIL validation summary: train '$n_train' val '$n_val'"; fails=$((fails + 1)); fi

# A FIFO as data.train is refused instead of blocking forever.
mkfifo "$WORK/fifo.jsonl"
write_recipe "$WORK/r5.yaml" "$WORK/model" "$WORK/fifo.jsonl" "$WORK/a5"
expect_fail fifo "fifo\.jsonl: not a regular file or directory" timeout 20 "$FTUNE" train "$WORK/r5.yaml"

# Commands and options that accepted nonsense.
expect_fail unknown-command "unknown command 'trian' \(commands: train, " "$FTUNE" trian
ver=$("$FTUNE" --version 2>&1)
printf '%s' "$ver" | grep -E >/dev/null '^ftune [0-9]+\.[0-9]+\.[0-9]+ \(' && echo "ok   --version: $ver" || {
  echo "FAIL --version: $ver"; fails=$((fails + 1)); }
expect_fail dump-negative-n "data dump: -n must be at least 1, found -1" "$FTUNE" data dump --data "$WORK/d.jsonl" -n -1
expect_fail preview-zero-n "data preview: -n must be at least 1, found 0" "$FTUNE" data preview "$WORK/r4.yaml" -n 0
finish
