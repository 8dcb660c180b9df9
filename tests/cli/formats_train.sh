# Every row format that needs the model's tokenizer trains (not only text/auto), a .json file that
# holds one array of rows is read as rows, and `data preview` sees the same examples as `train`.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
cat >"$WORK/alpaca.jsonl" <<'J'
{"instruction": "Name the colour of the fox.", "input": "", "output": "The fox is red."}
{"instruction": "Add the numbers.", "input": "two and three", "output": "five"}
J
cat >"$WORK/messages.jsonl" <<'J'
{"messages": [{"role": "user", "content": "Where does the wolf live?"}, {"role": "assistant", "content": "Near the river."}]}
{"messages": [{"role": "user", "content": "What is one plus two?"}, {"role": "assistant", "content": "Three."}]}
J
cat >"$WORK/pc.jsonl" <<'J'
{"prompt": "The deer lives", "completion": " near the river."}
{"prompt": "Six plus one is", "completion": " seven."}
J
for fmt in alpaca messages prompt_completion; do
  data=$WORK/$fmt.jsonl
  [ "$fmt" = prompt_completion ] && data=$WORK/pc.jsonl
  write_recipe "$WORK/$fmt.yaml" "$WORK/model" "$data" "$WORK/out-$fmt"
  sed -i "s/^  max_seq_len: 32$/  max_seq_len: 128\n  format: $fmt/" "$WORK/$fmt.yaml"
  if log=$("$FTUNE" train "$WORK/$fmt.yaml" 2>&1) && [ -s "$WORK/out-$fmt/adapter_model.safetensors" ]; then
    echo "ok   data.format=$fmt trains"
  else
    echo "FAIL data.format=$fmt: $log"; fails=$((fails + 1))
  fi
  # The summary line of train and of preview come from the same loader: same counts.
  t=$(printf '%s\n' "$log" | sed -n 's/^ftune: train: \(.*\) (template.*/\1/p')
  p=$("$FTUNE" data preview "$WORK/$fmt.yaml" 2>&1 | sed -n 's/^data: \(.*\) | template.*/\1/p')
  if [ -n "$t" ] && [ "$t" = "$p" ]; then echo "ok   preview agrees with train for $fmt ($t)"; else
    echo "FAIL preview/train differ for $fmt: train '$t' preview '$p'"; fails=$((fails + 1)); fi
done

# One JSON array of rows in a .json file: read as rows (element index in messages).
printf '[\n  {"text": "the fox lives near the river"},\n  {"text": "one plus two is three"},\n  7\n]\n' >"$WORK/rows.json"
out=$("$FTUNE" data dump --data "$WORK/rows.json" 2>&1)
if printf '%s' "$out" | grep >/dev/null '"text":"one plus two is three"' && printf '%s' "$out" | grep >/dev/null 'rows\.json\[2\]: row is not a JSON object' \
   && printf '%s' "$out" | grep >/dev/null "2 rows printed, 1 malformed"; then
  echo "ok   .json array read as rows"; else echo "FAIL .json array: $out"; fails=$((fails + 1)); fi
write_recipe "$WORK/arr.yaml" "$WORK/model" "$WORK/rows.json" "$WORK/out-arr"
if "$FTUNE" train "$WORK/arr.yaml" >/dev/null 2>&1 && [ -s "$WORK/out-arr/adapter_model.safetensors" ]; then
  echo "ok   .json array trains"; else echo "FAIL .json array does not train"; fails=$((fails + 1)); fi
printf '[{"text": "unterminated"},\n' >"$WORK/cut.json"
expect_fail json-array-cut "cut\.json: not a valid JSON array of rows" "$FTUNE" data dump --data "$WORK/cut.json"
finish
