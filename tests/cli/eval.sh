# ftune eval: perplexity of a dataset and multiple-choice accuracy as JSON; the adapter changes the
# score; --out appears complete and is not replaced without --overwrite; bad input is one line.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
head -24 "$ROOT/examples/quickstart/train.jsonl" >"$WORK/d.jsonl"
"$FTUNE" eval --model "$WORK/model" --data "$WORK/d.jsonl" --max-seq-len 64 --out "$WORK/ppl.json" >"$WORK/ppl.out" 2>"$WORK/err" \
  || { echo "FAIL perplexity: $(tail -2 "$WORK/err")"; fails=$((fails + 1)); }
python3 - "$WORK/ppl.out" "$WORK/ppl.json" <<'PY' && echo "ok   perplexity: JSON on stdout and in --out" || { echo "FAIL perplexity JSON"; fails=$((fails + 1)); }
import json, math, sys
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
assert a == b and a["task"] == "perplexity" and a["examples"] == 24 and a["tokens"] > 24, a
# a random model of a 512-token vocabulary: about uniform, so the perplexity is near 512
assert math.isclose(a["perplexity"], math.exp(a["loss"])) and 100 < a["perplexity"] < 2000, a
PY
# A short LoRA run: its adapter lowers the perplexity of the data it trained on.
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/tuned" "  lr: 1e-2"
sed -i 's/^  max_steps: 2$/  max_steps: 12/; s/^  max_seq_len: 32$/  max_seq_len: 64\n  train_on: all/' "$WORK/r.yaml"
"$FTUNE" train "$WORK/r.yaml" 2>/dev/null || { echo "FAIL training the adapter"; fails=$((fails + 1)); }
"$FTUNE" eval --model "$WORK/model" --adapter "$WORK/tuned" --data "$WORK/d.jsonl" --max-seq-len 64 >"$WORK/ppl2.out" 2>/dev/null
python3 - "$WORK/ppl.out" "$WORK/ppl2.out" <<'PY' && echo "ok   the trained adapter lowers the perplexity" || { echo "FAIL adapter perplexity"; fails=$((fails + 1)); }
import json, sys
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
assert b["perplexity"] < 0.8 * a["perplexity"] and b["adapter"], (a, b)
PY
printf '%s\n' '{"context": "Question: what is two and two?", "choices": [" four", " five", " a fish"], "gold": 0}' \
  '{"context": "The sky is", "choices": [" blue", " green"], "gold": 0}' >"$WORK/c.jsonl"
"$FTUNE" eval --model "$WORK/model" --choices "$WORK/c.jsonl" >"$WORK/mc.out" 2>"$WORK/err" || { echo "FAIL choices: $(tail -2 "$WORK/err")"; fails=$((fails + 1)); }
python3 - "$WORK/mc.out" <<'PY' && echo "ok   multiple choice: acc and acc_norm" || { echo "FAIL choices JSON"; fails=$((fails + 1)); }
import json, sys
a = json.load(open(sys.argv[1]))
assert a["task"] == "multiple_choice" and a["items"] == 2 and len(a["picked"]) == 2, a
assert a["acc"] in (0, 0.5, 1) and a["acc_norm"] in (0, 0.5, 1), a
PY
expect_fail out-exists "--out .*ppl\.json: exists \(pass --overwrite to replace it\)" \
  "$FTUNE" eval --model "$WORK/model" --data "$WORK/d.jsonl" --max-seq-len 64 --out "$WORK/ppl.json"
expect_fail neither "give one of --data \(perplexity\) or --choices" "$FTUNE" eval --model "$WORK/model"
printf '{"context": "a", "choices": ["b", "c"], "gold": 5}\n' >"$WORK/bad.jsonl"
expect_fail bad-gold "bad\.jsonl: row 1: gold 5 is not the index of one of its 2 choices" \
  "$FTUNE" eval --model "$WORK/model" --choices "$WORK/bad.jsonl"
expect_fail no-model "config\.json" "$FTUNE" eval --model "$WORK/none" --data "$WORK/d.jsonl"
finish
