# ftune generate: a text prompt streams its completion; --input rows give JSON lines that agree
# with the streamed text; a stop string ends the text before it; sampling repeats with its seed;
# bad input is one line naming what is wrong.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
"$FTUNE" generate --model "$WORK/model" --prompt "Once upon a time" --max-new-tokens 12 --ignore-eos >"$WORK/s.txt" 2>"$WORK/s.err"
grep -q "12 tokens, finished by length" "$WORK/s.err" && [ -s "$WORK/s.txt" ] && echo "ok   streamed 12 tokens" || {
  echo "FAIL stream: $(cat "$WORK/s.err")"; fails=$((fails + 1)); }
printf '{"prompt": "Once upon a time"}\n{"input_ids": [1, 7, 9, 11]}\n' >"$WORK/in.jsonl"
"$FTUNE" generate --model "$WORK/model" --input "$WORK/in.jsonl" --max-new-tokens 12 --ignore-eos --out "$WORK/out.jsonl" 2>/dev/null
python3 - "$WORK/out.jsonl" "$WORK/s.txt" <<'PY' && echo "ok   --input rows: JSON lines, the streamed text" || { echo "FAIL --input rows"; fails=$((fails + 1)); }
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
streamed = open(sys.argv[2]).read().rstrip("\n")
assert len(rows) == 2 and all(len(r["tokens"]) == 12 and r["finish_reason"] == "length" for r in rows), rows
assert rows[0]["prompt"] == "Once upon a time" and rows[0]["completion"] == streamed, (rows[0], streamed)
PY
# A stop string: the text ends before it (taken from the greedy completion, so it does occur).
stop=$(python3 -c 'import json,sys; t=json.loads(open(sys.argv[1]).readline())["completion"]; print(t[len(t)//2:len(t)//2+3])' "$WORK/out.jsonl")
if [ -n "$stop" ]; then
  "$FTUNE" generate --model "$WORK/model" --prompt "Once upon a time" --max-new-tokens 12 --ignore-eos --stop "$stop" \
    >"$WORK/stop.txt" 2>"$WORK/stop.err"
  python3 - "$WORK/stop.txt" "$WORK/s.txt" "$stop" <<'PY' && grep -q "finished by stop" "$WORK/stop.err" && echo "ok   --stop ends the text before it" || { echo "FAIL --stop: $(cat "$WORK/stop.err")"; fails=$((fails + 1)); }
import sys
got, full, stop = open(sys.argv[1]).read().rstrip("\n"), open(sys.argv[2]).read(), sys.argv[3]
assert full.startswith(got) and stop not in got and full[len(got):].startswith(stop), (got, full, stop)
PY
fi
for i in 1 2; do
  "$FTUNE" generate --model "$WORK/model" --prompt "Hi" --max-new-tokens 10 --ignore-eos --temperature 0.9 --top-k 50 \
    --top-p 0.95 --seed 7 >"$WORK/r$i.txt" 2>/dev/null
done
cmp -s "$WORK/r1.txt" "$WORK/r2.txt" && echo "ok   sampling repeats with its seed" || { echo "FAIL seeded sampling differs"; fails=$((fails + 1)); }
# --chat: the text prompt inside the llama2 template (its [INST] ... [/INST] wrapping adds tokens).
printf '{"prompt": "Once upon a time"}\n' >"$WORK/one.jsonl"
"$FTUNE" generate --model "$WORK/model" --input "$WORK/one.jsonl" --max-new-tokens 2 --chat llama2 --out "$WORK/chat.jsonl" 2>/dev/null
python3 - "$WORK/out.jsonl" "$WORK/chat.jsonl" <<'PY' && echo "ok   --chat llama2 wraps the prompt" || { echo "FAIL --chat"; fails=$((fails + 1)); }
import json, sys
plain, chat = json.loads(open(sys.argv[1]).readline()), json.loads(open(sys.argv[2]).readline())
assert chat["prompt_tokens"] >= plain["prompt_tokens"] + 6, (plain["prompt_tokens"], chat["prompt_tokens"])
PY
expect_fail gen-chat-auto "has no chat template ftune knows" "$FTUNE" generate --model "$WORK/model" --prompt a --chat
expect_fail gen-both "give one of --prompt TEXT or --input rows\.jsonl" \
  "$FTUNE" generate --model "$WORK/model" --prompt a --input "$WORK/in.jsonl"
expect_fail gen-top-p "--top-p must be in \(0, 1\], got 1\.5" "$FTUNE" generate --model "$WORK/model" --prompt a --top-p 1.5
printf '{"prompt": "a"}\n{"text": 3}\n' >"$WORK/bad.jsonl"
expect_fail gen-bad-row "bad\.jsonl: row 2: expected a \"prompt\" string or an \"input_ids\" list" \
  "$FTUNE" generate --model "$WORK/model" --input "$WORK/bad.jsonl"
printf '{"input_ids": [1, 99999]}\n' >"$WORK/oov.jsonl"
expect_fail gen-oov "token id 99999 is outside the vocabulary of 512" "$FTUNE" generate --model "$WORK/model" --input "$WORK/oov.jsonl"
expect_fail gen-no-tokenizer "no tokenizer found" \
  "$FTUNE" generate --model "$ROOT/tests/fixtures/hf/mha_untied/model" --prompt "hello"
# --out: an existing file is kept unless --overwrite; the input is never the output.
echo keep >"$WORK/mine.jsonl"
expect_fail gen-out-exists "--out .*mine\.jsonl: exists \(pass --overwrite to replace it\)" \
  "$FTUNE" generate --model "$WORK/model" --input "$WORK/in.jsonl" --max-new-tokens 2 --out "$WORK/mine.jsonl"
[ "$(cat "$WORK/mine.jsonl")" = keep ] && echo "ok   an existing --out is untouched" || { echo "FAIL --out was changed"; fails=$((fails + 1)); }
"$FTUNE" generate --model "$WORK/model" --input "$WORK/in.jsonl" --max-new-tokens 2 --out "$WORK/mine.jsonl" --overwrite 2>/dev/null
[ "$(wc -l <"$WORK/mine.jsonl")" -eq 2 ] && [ ! -e "$WORK/mine.jsonl.partial" ] && echo "ok   --overwrite replaces --out whole" \
  || { echo "FAIL --overwrite"; fails=$((fails + 1)); }
expect_fail gen-out-input "--out .*in\.jsonl: is the input file" \
  "$FTUNE" generate --model "$WORK/model" --input "$WORK/in.jsonl" --max-new-tokens 2 --out "$WORK/in.jsonl" --overwrite
expect_fail gen-device "--device: expected cpu or gpu, got 'tpu'" "$FTUNE" generate --model "$WORK/model" --prompt a --device tpu
expect_fail gen-dtype-cpu "--dtype and --nf4 are for --device gpu" "$FTUNE" generate --model "$WORK/model" --prompt a --nf4
expect_fail gen-dtype "--dtype: expected bf16, fp16, fp32 or auto, got 'int8'" \
  "$FTUNE" generate --model "$WORK/model" --prompt a --device gpu --dtype int8
expect_fail gen-nf4-fp32 "--nf4: an NF4 base dequantizes into bf16 or fp16, not fp32" \
  "$FTUNE" generate --model "$WORK/model" --prompt a --device gpu --dtype fp32 --nf4
if ! "$FTUNE" --version | grep >/dev/null "CUDA"; then
  expect_fail gen-no-cuda "--device gpu: this ftune was built without CUDA" \
    "$FTUNE" generate --model "$WORK/model" --prompt a --device gpu
fi
finish
