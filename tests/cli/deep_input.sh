# Hostile nesting and absurd settings end in one-line errors or skipped rows, never a crash.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
deep=$(python3 -c "print('[' * 300000 + ']' * 300000)")
printf '{"text": "a fine row about the fox"}\n{"text": "another fine row", "extra": %s}\n' "$deep" >"$WORK/deep.jsonl"
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/deep.jsonl" "$WORK/out"
out=$("$FTUNE" train "$WORK/r.yaml" 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 0 ] && printf '%s' "$out" | grep >/dev/null "deep\.jsonl:2: nests deeper than 256 levels"; then
  echo "ok   deeply nested row skipped in train"; else echo "FAIL deep row in train (rc $rc): ${out:0:400}"; fails=$((fails + 1)); fi
out=$("$FTUNE" data dump --data "$WORK/deep.jsonl" 2>&1 >/dev/null) && rc=0 || rc=$?
if [ "$rc" -eq 0 ] && printf '%s' "$out" | grep >/dev/null "deep\.jsonl:2: nests deeper"; then
  echo "ok   deeply nested row skipped in data dump"; else echo "FAIL deep row in dump (rc $rc): ${out:0:400}"; fails=$((fails + 1)); fi
printf '[{"text": "x", "y": %s}]\n' "$deep" >"$WORK/deep.json"
expect_fail deep-json-array "deep\.json\[0\]: nests deeper than 256 levels" "$FTUNE" data dump --data "$WORK/deep.json"

# A model's config.json and an adapter_config.json nested absurdly deep.
cp -r "$WORK/model" "$WORK/deepmodel"
python3 - "$WORK/deepmodel/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
text = json.dumps(c)[:-1] + ', "junk": ' + '[' * 100000 + ']' * 100000 + '}'
open(p, 'w').write(text)
PY
expect_fail deep-config "config\.json: nests deeper than 256 levels" "$FTUNE" inspect "$WORK/deepmodel"

# A recipe nested absurdly deep (YAML flow sequences).
python3 -c "print('model: m\noutput_dir: o\ndata:\n  train: ' + '[' * 100000 + ']' * 100000)" >"$WORK/deep.yaml"
expect_fail deep-yaml "deep\.yaml:4: the recipe nests deeper than [0-9]+ levels" "$FTUNE" train "$WORK/deep.yaml"

# Thread counts: absurd values are refused by key; more than the cores is capped, and trains.
expect_fail threads-absurd "train\.threads: must be in \[0, 4096\], found 100000000" \
  "$FTUNE" train "$WORK/r.yaml" --overwrite --set train.threads=100000000
out=$("$FTUNE" train "$WORK/r.yaml" --overwrite --set train.threads=4000 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 0 ] && printf '%s' "$out" | grep >/dev/null "train.threads = 4000 is more than the"; then
  echo "ok   threads above the cores capped"; else echo "FAIL threads 4000 (rc $rc): ${out:0:300}"; fails=$((fails + 1)); fi
finish
