# Bad datasets: one-line errors naming the file and row; long rows truncated or dropped, counted.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"

: >"$WORK/empty.jsonl"
write_recipe "$WORK/r1.yaml" "$WORK/model" "$WORK/empty.jsonl" "$WORK/out1"
expect_fail empty-dataset 'empty\.jsonl: .*empty' "$FTUNE" train "$WORK/r1.yaml"

# Malformed rows: skipped, counted and the first ones named; data.strict=true fails on the first.
printf '{"text": "a fine row"}\n{"txt": "no text field"}\n' >"$WORK/nofield.jsonl"
write_recipe "$WORK/r2.yaml" "$WORK/model" "$WORK/nofield.jsonl" "$WORK/out2"
out=$("$FTUNE" train "$WORK/r2.yaml" 2>&1)
if printf '%s' "$out" | grep >/dev/null "1 malformed rows skipped" && printf '%s' "$out" | grep >/dev/null "skipped .*nofield\.jsonl:2: row matches no format"; then
  echo "ok   missing field skipped and reported"; else echo "FAIL missing field: $out"; fails=$((fails + 1)); fi
expect_fail missing-field-strict "nofield\.jsonl:2: row matches no format.*data\.strict" \
  "$FTUNE" train "$WORK/r2.yaml" --overwrite --set data.strict=true
expect_fail missing-field-text "nofield\.jsonl:2: row has no 'text' field" \
  "$FTUNE" train "$WORK/r2.yaml" --overwrite --set data.strict=true --set data.format=text

printf '{"text": "ok then"}\n{"text": "broken\n[1, 2]\n{"text": "bad \xff byte"}\n' >"$WORK/broken.jsonl"
write_recipe "$WORK/r3.yaml" "$WORK/model" "$WORK/broken.jsonl" "$WORK/out3"
out=$("$FTUNE" train "$WORK/r3.yaml" 2>&1)
if printf '%s' "$out" | grep >/dev/null "3 malformed rows skipped" && printf '%s' "$out" | grep >/dev/null "broken\.jsonl:3: row is not a JSON object" \
   && printf '%s' "$out" | grep >/dev/null "broken\.jsonl:4: invalid UTF-8"; then
  echo "ok   broken rows skipped and reported"; else echo "FAIL broken rows: $out"; fails=$((fails + 1)); fi
expect_fail broken-json-strict "broken\.jsonl:2: invalid JSON" "$FTUNE" train "$WORK/r3.yaml" --overwrite --set data.strict=true

printf '{"input_ids": [1, 2, 3, 99999]}\n' >"$WORK/range.jsonl"
write_recipe "$WORK/r4.yaml" "$WORK/model" "$WORK/range.jsonl" "$WORK/out4"
expect_fail id-out-of-range "range\.jsonl: all 1 rows are malformed.*range\.jsonl:1: .*99999" "$FTUNE" train "$WORK/r4.yaml"

# Long rows: truncated (and counted), or dropped (and counted); all dropped is an error.
python3 -c "
import json
for n in (10, 50, 60): print(json.dumps({'input_ids': [5 + i % 400 for i in range(n)]}))" >"$WORK/long.jsonl"
write_recipe "$WORK/r5.yaml" "$WORK/model" "$WORK/long.jsonl" "$WORK/out5"
out=$("$FTUNE" train "$WORK/r5.yaml" 2>&1)
if printf '%s' "$out" | grep >/dev/null "2 truncated, 0 dropped"; then echo "ok   truncate counted"; else
  echo "FAIL truncate: $out"; fails=$((fails + 1)); fi
write_recipe "$WORK/r6.yaml" "$WORK/model" "$WORK/long.jsonl" "$WORK/out6"
sed -i 's/^  max_seq_len: 32$/  max_seq_len: 32\n  overflow: drop/' "$WORK/r6.yaml"
out=$("$FTUNE" train "$WORK/r6.yaml" 2>&1)
if printf '%s' "$out" | grep >/dev/null "0 truncated, 2 dropped"; then echo "ok   drop counted"; else
  echo "FAIL drop: $out"; fails=$((fails + 1)); fi
python3 -c "
import json
for n in (50, 60): print(json.dumps({'input_ids': [5] * n}))" >"$WORK/alllong.jsonl"
write_recipe "$WORK/r7.yaml" "$WORK/model" "$WORK/alllong.jsonl" "$WORK/out7"
sed -i 's/^  max_seq_len: 32$/  max_seq_len: 32\n  overflow: drop/' "$WORK/r7.yaml"
expect_fail all-dropped "alllong\.jsonl: .*dropped" "$FTUNE" train "$WORK/r7.yaml"
finish
