# ftune serve as a process: it prints the port it took, answers /health, /v1/models, lm-eval's
# loglikelihood request (whose log-probabilities are the log-softmax of `ftune logits`), the
# tokenizer routes and a text completion; a bad request gets a 4xx JSON error and the server goes
# on; SIGTERM stops it with status 0; a bad flag or adapter is one line naming it.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
FIX=$ROOT/tests/fixtures/hf/gqa_tied
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT

source "$(dirname "$0")/serve_lib.bash"

# The fixture model and its adapter (token ids only: it has no tokenizer).
if start_server "$WORK/fix.log" --model "$FIX/model" --adapter "tuned=$FIX/adapter" --name base; then
  call GET /health
  check "/health" "assert status == 200"
  call GET /v1/models
  check "/v1/models lists the base and the adapter" \
    "assert status == 200 and [m['id'] for m in r['data']] == ['base', 'tuned'] and r['data'][1]['parent'] == 'base'"
  ids="[1, 17, 42, 99, 5, 230, 64, 12, 8, 77]"
  printf '{"input_ids": %s}\n' "$ids" >"$WORK/rows.jsonl"
  "$FTUNE" logits --model "$FIX/model" --adapter "$FIX/adapter" --input "$WORK/rows.jsonl" --out "$WORK/logits.safetensors" 2>/dev/null
  call POST /v1/completions "{\"model\": \"tuned\", \"prompt\": [$ids], \"max_tokens\": 1, \"temperature\": 0, \"logprobs\": 1, \"echo\": true, \"seed\": 1234}"
  # fp32 both sides, batched against one row: 1e-4 on a log-probability (the C++ test measures ~1e-6).
  check "lm-eval's loglikelihood request: the log-softmax of ftune logits" "
import math, struct
f = open('$WORK/logits.safetensors', 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
t = h['logits']; B, T, V = t['shape']; a, b = t['data_offsets']; lg = struct.unpack('<%df' % (B * T * V), data[a:b])
ids = $ids
lp = r['choices'][0]['logprobs']['token_logprobs']
assert status == 200 and len(lp) == T + 1 and lp[0] is None, (status, len(lp))
for i in range(1, T):
    row = lg[(i - 1) * V:i * V]; m = max(row); lse = m + math.log(sum(math.exp(x - m) for x in row))
    assert abs(lp[i] - (row[ids[i]] - lse)) < 1e-4, (i, lp[i], row[ids[i]] - lse)
top = r['choices'][0]['logprobs']['top_logprobs']
assert all(isinstance(d, dict) and 1 <= len(d) <= 2 for d in top[1:]), top"
  call POST /v1/completions '{"model": "other", "prompt": [1, 2]}'
  check "an unknown model: 404 with a JSON error naming it" \
    "assert status == 404 and 'other' in r['error']['message'] and r['error']['param'] == 'model'"
  call POST /v1/completions '{"prompt": [1, 2'
  check "malformed JSON: 400 with a JSON error" "assert status == 400 and 'not valid JSON' in r['error']['message']"
  call POST /v1/completions '{"prompt": "some text"}'
  check "a text prompt without a tokenizer: 400" "assert status == 400 and 'no tokenizer' in r['error']['message']"
  call GET /health
  check "the server goes on after bad requests" "assert status == 200"
  stop_server "$WORK/fix.log"
fi

# A model with a tokenizer: the tokenizer routes lm-eval's remote tokenizer reads, and text.
if start_server "$WORK/tok.log" --model "$WORK/model"; then
  call GET /tokenizer_info
  check "/tokenizer_info: eos and bos" \
    "assert status == 200 and r['eos_token'] == '</s>' and r['bos_token'] == '<s>' and r['eos_token_id'] == 2"
  call POST /tokenize '{"prompt": "</s>", "add_special_tokens": false}'
  check "/tokenize reads the EOS string as its id" "assert status == 200 and r['tokens'] == [2]"
  call POST /tokenize '{"prompt": "Once upon a time"}'
  cp "$WORK/body" "$WORK/tokens.json"
  check "/tokenize puts BOS first" "assert status == 200 and r['tokens'][0] == 1 and r['count'] == len(r['tokens'])"
  call POST /detokenize "{\"tokens\": $(python3 -c "import json; print(json.load(open('$WORK/tokens.json'))['tokens'])")}"
  check "/detokenize gives the text back" "assert status == 200 and r['prompt'] == 'Once upon a time'"
  call POST /v1/completions '{"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0, "ignore_eos": true}'
  check "a text completion: 5 tokens" \
    "assert status == 200 and r['usage']['completion_tokens'] == 5 and r['choices'][0]['finish_reason'] == 'length'"
  call POST /v1/chat/completions '{"messages": [{"role": "user", "content": "hi"}]}'
  check "chat on a model without a chat template: 400 naming the flag" \
    "assert status == 400 and '--chat-template' in r['error']['message']"
  expect_fail serve-port-in-use "cannot listen on 127\.0\.0\.1:$PORT" "$FTUNE" serve --model "$WORK/model" --port "$PORT"
  stop_server "$WORK/tok.log"
fi

expect_fail serve-adapter-spec "--adapter: expected NAME=DIR, got 'tuned'" \
  "$FTUNE" serve --model "$FIX/model" --adapter tuned
expect_fail serve-adapter-twice "--adapter: the name 'a' is given twice" \
  "$FTUNE" serve --model "$WORK/model" --adapter "a=$FIX/adapter" --adapter "a=$FIX/adapter"
expect_fail serve-adapter-mismatch "--adapter 'a': .*adapter_model\.safetensors: tensor .* has shape" \
  "$FTUNE" serve --model "$WORK/model" --adapter "a=$FIX/adapter"
expect_fail serve-adapter-missing "--adapter 'a': .*$WORK/none" \
  "$FTUNE" serve --model "$WORK/model" --adapter "a=$WORK/none"
expect_fail serve-chat-template "--chat-template: expected llama2, llama3, llama3.1, mistral, chatml or auto, got 'jinja'" \
  "$FTUNE" serve --model "$WORK/model" --chat-template jinja
expect_fail serve-batch "--max-batch-tokens must be at least 1, got 0" \
  "$FTUNE" serve --model "$WORK/model" --max-batch-tokens 0
finish
