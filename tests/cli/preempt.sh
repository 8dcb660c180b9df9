# SIGTERM mid-run: the step finishes, a checkpoint is written, ftune exits 75 ("preempted,
# resumable") leaving output_dir's previous files alone; `--resume` then ends with the very adapter
# an uninterrupted run writes. A recipe change on resume is refused naming the key.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
head -64 "$ROOT/examples/quickstart/train.jsonl" >"$WORK/d.jsonl"
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/out" "  lr: 1e-3" "lora:" "  dropout: 0.1"
sed -i 's/^  max_steps: 2$/  max_steps: 300/' "$WORK/r.yaml"
# term_run RECIPE OUT LOG [DELAY]: train RECIPE, send SIGTERM once its first step is logged (after
# DELAY more seconds), and set rc to its exit status.
term_run() {
  "$FTUNE" train "$1" >"$3" 2>&1 &
  local pid=$! i
  for i in $(seq 1 400); do
    [ -s "$2/.ftune-partial/metrics.jsonl" ] && break
    sleep 0.01
  done
  sleep "${4:-0}"
  kill -TERM "$pid"
  rc=0; wait "$pid" || rc=$?
}
"$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/ref" 2>/dev/null
term_run "$WORK/r.yaml" "$WORK/out" "$WORK/log"
if [ "$rc" -eq 0 ]; then
  echo "skip preemption: the run ended before the signal arrived"
else
  last=$(tail -1 "$WORK/log")
  if [ "$rc" -eq 75 ] && printf '%s' "$last" | grep -E >/dev/null "stopped by signal 15 after step [0-9]+ of 300: checkpoint .*step-[0-9]+ written"; then
    echo "ok   SIGTERM: exit 75, $last"; else echo "FAIL SIGTERM: rc $rc: $last"; fails=$((fails + 1)); fi
  [ ! -e "$WORK/out/adapter_model.safetensors" ] && echo "ok   no adapter before the run completes" || {
    echo "FAIL adapter written by a stopped run"; fails=$((fails + 1)); }
  expect_fail resume-changed "cannot resume: the run was checkpointed with another setting \(train\.lr: 0\.001 -> 0\.002\)" \
    "$FTUNE" train "$WORK/r.yaml" --resume --set train.lr=2e-3
  if "$FTUNE" train "$WORK/r.yaml" --resume 2>"$WORK/log2" && grep -q "resuming from .*step-" "$WORK/log2"; then
    echo "ok   resumed"; else echo "FAIL resume: $(tail -2 "$WORK/log2")"; fails=$((fails + 1)); fi
  if cmp -s "$WORK/ref/adapter_model.safetensors" "$WORK/out/adapter_model.safetensors"; then
    echo "ok   resumed adapter is byte for byte the uninterrupted run's"; else
    echo "FAIL resumed adapter differs from the uninterrupted run's"; fails=$((fails + 1)); fi
  [ "$(wc -l <"$WORK/out/metrics.jsonl")" -eq 300 ] && echo "ok   metrics of all 300 steps" || {
    echo "FAIL metrics lines: $(wc -l <"$WORK/out/metrics.jsonl")"; fails=$((fails + 1)); }
fi
# train.grace_s: 0 leaves no time to finish a step, so a signal that lands inside one abandons it at
# the next micro-batch (16 per step here) and the checkpoint holds the step before; the resumed run
# is still byte for byte the uninterrupted one.
write_recipe "$WORK/g.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/gout" "  lr: 1e-3" "  grad_accum: 16" "  grace_s: 0"
sed -i 's/^  max_steps: 2$/  max_steps: 40/' "$WORK/g.yaml"
"$FTUNE" train "$WORK/g.yaml" --set output_dir="$WORK/gref" 2>/dev/null
term_run "$WORK/g.yaml" "$WORK/gout" "$WORK/glog" 0.05
if [ "$rc" -eq 0 ]; then
  echo "skip grace: the run ended before the signal arrived"
else
  last=$(tail -1 "$WORK/glog")
  if [ "$rc" -eq 75 ] && printf '%s' "$last" | grep -E >/dev/null "stopped by signal 15 (during step [0-9]+ of 40, abandoned to stay within train\.grace_s=0: checkpoint .*step-[0-9]+ of step [0-9]+|after step [0-9]+ of 40: checkpoint .*step-[0-9]+) written"; then
    echo "ok   SIGTERM with grace_s 0: exit 75, $last"; else echo "FAIL SIGTERM with grace_s 0: rc $rc: $last"; fails=$((fails + 1)); fi
  "$FTUNE" train "$WORK/g.yaml" --resume 2>/dev/null
  cmp -s "$WORK/gref/adapter_model.safetensors" "$WORK/gout/adapter_model.safetensors" && echo "ok   resumed after an abandoned step: byte for byte" || {
    echo "FAIL resumed adapter differs after grace_s 0"; fails=$((fails + 1)); }
fi
expect_fail resume-nothing "no checkpoint to resume from" "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/none" --resume
finish
