# Loss curves as a PNG: written at the end of a run, and by `ftune plot` for a finished run.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
head -80 "$ROOT/examples/quickstart/train.jsonl" >"$WORK/d.jsonl"
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/out" "  eval_every: 2"
sed -i 's/^  max_steps: 2$/  max_steps: 8/; s/^  max_seq_len: 32$/  max_seq_len: 32\n  val_fraction: 0.2/' "$WORK/r.yaml"
"$FTUNE" train "$WORK/r.yaml" 2>/dev/null
png_size() { python3 -c "
import struct, sys
b = open(sys.argv[1], 'rb').read(24)
assert b[:8] == b'\x89PNG\r\n\x1a\n' and b[12:16] == b'IHDR', 'not a PNG'
print('%dx%d' % struct.unpack('>II', b[16:24]))" "$1"; }
[ "$(png_size "$WORK/out/loss.png")" = 960x540 ] && echo "ok   loss.png written at the end (960x540)" || {
  echo "FAIL loss.png"; fails=$((fails + 1)); }
"$FTUNE" plot "$WORK/out" --out "$WORK/again.png" 2>/dev/null && [ "$(png_size "$WORK/again.png")" = 960x540 ] \
  && echo "ok   ftune plot" || { echo "FAIL ftune plot"; fails=$((fails + 1)); }
mkdir -p "$WORK/empty"
expect_fail plot-no-metrics "empty: no metrics.jsonl" "$FTUNE" plot "$WORK/empty"
printf '{"step": 1, "loss": 2.5}\nnot json\n' >"$WORK/bad.jsonl"
expect_fail plot-bad-line "bad\.jsonl:2: not a metrics line" "$FTUNE" plot "$WORK/bad.jsonl" --out "$WORK/x.png"
finish
