# `ftune data dump` and `ftune data preview`: rows as read, examples with their loss masks.
source "$(dirname "$0")/lib.bash" "$@"
check() {  # check NAME REGEX TEXT
  if printf '%s' "$3" | grep -E >/dev/null -- "$2"; then echo "ok   $1"; else echo "FAIL $1: /$2/ not in:"; printf '%s\n' "$3"; fails=$((fails + 1)); fi
}
out=$("$FTUNE" data dump --data "$ROOT/tests/fixtures/parquet/row_groups.parquet" 2>/dev/null | wc -l)
check parquet-rows "^120$" "$out"
out=$("$FTUNE" data dump --data "$ROOT/tests/fixtures/parquet" --columns text -n 3 2>/dev/null)
check columns '^\{"text":' "$out"
check limit "^3$" "$(printf '%s\n' "$out" | wc -l)"
printf '{"a": 1}\nnot json\n{"b": 2}\n' >"$WORK/m.jsonl"
out=$("$FTUNE" data dump --data "$WORK/m.jsonl" 2>&1)
check dump-skips "m\.jsonl:2: invalid JSON" "$out"
check dump-count "2 rows printed, 1 malformed rows skipped" "$out"
expect_fail dump-missing "nope\.parquet: not found" "$FTUNE" data dump --data "$WORK/nope.parquet"

make_model "$WORK/model"
printf '%s\n' '{"instruction": "Add one and two.", "output": "Three."}' \
  '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}' >"$WORK/chat.jsonl"
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/chat.jsonl" "$WORK/out"
out=$("$FTUNE" data preview "$WORK/r.yaml" --set data.template=alpaca --set data.max_seq_len=512 | cat)
check alpaca-masked "⟦.*Below is an instruction.*### Response:.*⟧ ?Three\." "$out"
out=$("$FTUNE" data preview "$WORK/r.yaml" --set data.template=chatml --set data.max_seq_len=512 | cat)
check chatml-masked "⟦<\|im_start\|>user.*⟧Hello! ?<\|im_end\|>" "$out"
check summary "padding: 2 examples -> 1 micro-batches" "$out"
finish
