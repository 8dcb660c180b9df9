# Generation and serving on the GPU: in fp32, `ftune generate --device gpu` gives the CPU's greedy
# tokens with and without an adapter (the GPU applies it unmerged, the CPU merged), and the GPU
# server's echo log-probabilities are the CPU server's; bf16 and an NF4 base generate every token
# asked for; `ftune eval --device gpu --dtype fp32` gives the CPU's perplexity and picks. Skipped
# (visibly) without a GPU.
source "$(dirname "$0")/lib.bash" "$@"
if ! "$FTUNE" --version | grep >/dev/null "CUDA" || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "skip: no CUDA backend or no GPU here"; finish; exit 0
fi
FIX=$ROOT/tests/fixtures/hf/mha_untied
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT
source "$(dirname "$0")/serve_lib.bash"
python3 - "$WORK/in.jsonl" <<'PY'
import json, random, sys
random.seed(4)
with open(sys.argv[1], "w") as f:
    for n in (3, 9, 17, 5):
        f.write(json.dumps({"input_ids": [random.randrange(3, 200) for _ in range(n)]}) + "\n")
PY
for ad in "" "--adapter $FIX/adapter"; do
  what=${ad:+with the adapter}
  "$FTUNE" generate --model "$FIX/model" $ad --input "$WORK/in.jsonl" --max-new-tokens 10 --ignore-eos \
    --out "$WORK/cpu.jsonl" --overwrite 2>"$WORK/cpu.err" || { echo "FAIL cpu: $(cat "$WORK/cpu.err")"; fails=$((fails + 1)); }
  "$FTUNE" generate --model "$FIX/model" $ad --input "$WORK/in.jsonl" --max-new-tokens 10 --ignore-eos \
    --device gpu --dtype fp32 --out "$WORK/gpu.jsonl" --overwrite 2>"$WORK/gpu.err" || { echo "FAIL gpu: $(cat "$WORK/gpu.err")"; fails=$((fails + 1)); }
  python3 - "$WORK/cpu.jsonl" "$WORK/gpu.jsonl" <<'PY' && echo "ok   fp32 GPU greedy tokens = CPU's ${what:-base}" || { echo "FAIL fp32 tokens ${what:-base}"; fails=$((fails + 1)); }
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) == 4, (len(a), len(b))
for x, y in zip(a, b):
    assert x["tokens"] == y["tokens"], (x["tokens"], y["tokens"])
    assert len(y["tokens"]) == 10 and y["finish_reason"] == "length"
PY
done
for flags in "--dtype bf16" "--dtype fp16" "--nf4"; do
  "$FTUNE" generate --model "$FIX/model" --adapter "$FIX/adapter" --input "$WORK/in.jsonl" --max-new-tokens 10 \
    --ignore-eos --device gpu $flags --out "$WORK/h.jsonl" --overwrite 2>"$WORK/h.err" \
    && python3 -c "
import json; rows = [json.loads(l) for l in open('$WORK/h.jsonl')]
assert len(rows) == 4 and all(len(r['tokens']) == 10 for r in rows)" \
    && echo "ok   GPU $flags generates every token" || { echo "FAIL GPU $flags: $(tail -2 "$WORK/h.err")"; fails=$((fails + 1)); }
done
# The same echo + logprobs request (lm-eval's loglikelihood) to a CPU and a GPU (fp32) server.
req='{"model": "tuned", "prompt": [5, 17, 33, 2, 91, 64, 8], "max_tokens": 0, "echo": true, "logprobs": 1, "temperature": 0}'
for dev in cpu gpu; do
  extra=; [ "$dev" = gpu ] && extra="--device gpu --dtype fp32"
  if start_server "$WORK/$dev.log" --model "$FIX/model" --adapter "tuned=$FIX/adapter" --name base $extra; then
    call POST /v1/completions "$req"
    cp "$WORK/body" "$WORK/$dev.json"
    check "$dev server answers the loglikelihood request" "assert status == 200"
    stop_server "$WORK/$dev.log"
  fi
done
python3 - "$WORK/cpu.json" "$WORK/gpu.json" <<'PY' && echo "ok   GPU server's log-probabilities = CPU's within 1e-4" || { echo "FAIL server log-probabilities"; fails=$((fails + 1)); }
import json, sys
a = json.load(open(sys.argv[1]))["choices"][0]["logprobs"]["token_logprobs"]
b = json.load(open(sys.argv[2]))["choices"][0]["logprobs"]["token_logprobs"]
assert len(a) == len(b) == 7 and a[0] is None and b[0] is None
# fp32 both; log-softmax over 512 logits each within 1e-5 relative: 1e-4 absolute on log p.
assert all(abs(x - y) < 1e-4 for x, y in zip(a[1:], b[1:])), (a, b)
PY
# ftune eval on both: a quickstart model (it has a tokenizer) and its data.
make_model "$WORK/qs"
head -12 "$ROOT/examples/quickstart/train.jsonl" >"$WORK/d.jsonl"
printf '%s\n' '{"context": "Question: what is two and two?", "choices": [" four", " five", " a fish"], "gold": 0}' \
  '{"context": "The sky is", "choices": [" blue", " green"], "gold": 0}' >"$WORK/c.jsonl"
for dev in cpu gpu; do
  extra=; [ "$dev" = gpu ] && extra="--device gpu --dtype fp32"
  "$FTUNE" eval --model "$WORK/qs" --data "$WORK/d.jsonl" --max-seq-len 64 $extra >"$WORK/ppl_$dev.json" 2>"$WORK/e.err" \
    || { echo "FAIL eval --data $dev: $(tail -2 "$WORK/e.err")"; fails=$((fails + 1)); }
  "$FTUNE" eval --model "$WORK/qs" --choices "$WORK/c.jsonl" $extra >"$WORK/mc_$dev.json" 2>"$WORK/e.err" \
    || { echo "FAIL eval --choices $dev: $(tail -2 "$WORK/e.err")"; fails=$((fails + 1)); }
done
python3 - "$WORK" <<'PY' && echo "ok   eval on the GPU (fp32) = on the CPU" || { echo "FAIL eval GPU vs CPU"; fails=$((fails + 1)); }
import json, sys
w = sys.argv[1]
a, b = json.load(open(f"{w}/ppl_cpu.json")), json.load(open(f"{w}/ppl_gpu.json"))
# fp32 both, per-token log-probabilities within 1e-5 relative: the summed loss within 1e-5 relative.
assert a["tokens"] == b["tokens"] and abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a, b)
a, b = json.load(open(f"{w}/mc_cpu.json")), json.load(open(f"{w}/mc_gpu.json"))
assert a["picked"] == b["picked"] and a["picked_norm"] == b["picked_norm"], (a, b)
PY
finish
