# `ftune tokenize` with the real Llama 3 tokenizer.json (fetched by `make test`), and bad input.
source "$(dirname "$0")/lib.bash" "$@"
TOK="$ROOT/build/assets/tokenizer-llama3/package/models"
if [ ! -f "$TOK/tokenizer.json" ]; then echo "missing $TOK (run scripts/fetch-assets.sh build/assets)"; exit 1; fi
check() {  # check NAME REGEX TEXT
  if printf '%s' "$3" | grep -E >/dev/null -- "$2"; then echo "ok   $1"; else echo "FAIL $1: /$2/ not in:"; printf '%s\n' "$3"; fails=$((fails + 1)); fi
}
out=$("$FTUNE" tokenize --tokenizer "$TOK" --text "Hello world")
check text-ids "ids: \[9906, 1917\]" "$out"
check text-pieces 'pieces: \["Hello","Ġworld"\]' "$out"
printf '{"text": "Hello world"}\n{"text": "<|eot_id|>"}\n' >"$WORK/in.jsonl"
out=$("$FTUNE" tokenize --tokenizer "$TOK" --input "$WORK/in.jsonl")
check jsonl-lines '^\{"ids": \[9906,1917\]\}' "$out"
check special-token-text '\{"ids": \[128009\]\}' "$out"
printf '{"text": "ok"}\n{"txt": 1}\n' >"$WORK/bad.jsonl"
expect_fail bad-row "bad\.jsonl:2: " "$FTUNE" tokenize --tokenizer "$TOK" --input "$WORK/bad.jsonl"
expect_fail no-dir "nope: model directory not found" "$FTUNE" tokenize --tokenizer "$WORK/nope" --text x
finish
