# Shared by the command-line tests: a tiny model, a recipe, and expect_fail.
# Usage in a test: source lib.bash "$@"  (args: path to ftune, repo root)
set -euo pipefail
FTUNE=$1
ROOT=$2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ftune-cli.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fails=0

make_model() {  # make_model DIR
  "$FTUNE" init-model --preset tiny --vocab-size 512 --random "$1" --tokenizer "$ROOT/examples/quickstart" \
    --seed 3 2>/dev/null
}

write_recipe() {  # write_recipe FILE MODEL DATA OUT [extra yaml lines]
  local f=$1
  cat >"$f" <<YAML
model: $2
output_dir: $4
data:
  train: $3
  max_seq_len: 32
train:
  micro_batch_size: 2
  max_steps: 2
  threads: 1
YAML
  shift 4
  for line in "$@"; do echo "$line" >>"$f"; done
}

# judge NAME REGEX RC TEXT: the check passes when RC is non-zero and TEXT matches REGEX.
judge() {
  if [ "$3" -eq 0 ]; then
    echo "FAIL $1: exit code 0"; fails=$((fails + 1))
  elif ! printf '%s' "$4" | grep -E >/dev/null -- "$2"; then
    echo "FAIL $1: message does not match /$2/: $4"; fails=$((fails + 1))
  else
    echo "ok   $1: $4"
  fi
}

# expect_fail NAME REGEX CMD...: CMD must exit non-zero with exactly one non-empty stderr line
# that matches REGEX (case-sensitive, extended).
expect_fail() {
  local name=$1 re=$2
  shift 2
  local err rc=0
  err=$("$@" 2>&1 >/dev/null) || rc=$?
  if [ "$rc" -ne 0 ] && [ "$(printf '%s\n' "$err" | grep -c . || true)" -ne 1 ]; then
    echo "FAIL $name: expected one line of error, got:"; printf '%s\n' "$err"; fails=$((fails + 1))
    return
  fi
  judge "$name" "$re" "$rc" "$err"
}

# expect_fail_last NAME REGEX CMD...: for commands that log progress before failing: CMD must exit
# non-zero and its last stderr line must be one "ftune: error: ..." line matching REGEX.
expect_fail_last() {
  local name=$1 re=$2
  shift 2
  local err rc=0
  err=$("$@" 2>&1 >/dev/null) || rc=$?
  judge "$name" "^ftune: error: .*$re" "$rc" "$(printf '%s\n' "$err" | grep . | tail -1)"
}

# compare A B TOL_LOSS TOL_WEIGHTS: per-step losses, gradient norms and validation losses within
# TOL_LOSS relative, every saved tensor within TOL_WEIGHTS (0 0: bit for bit).
compare() {
  python3 - "$1" "$2" "$3" "$4" <<'PY'
import json, math, struct, sys, glob, os
a, b, tol_l, tol_w = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
def rows(d):
    return [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
ra, rb = rows(a), rows(b)
assert len(ra) == len(rb), (len(ra), len(rb))
worst = wl = 0.0
for x, y in zip(ra, rb):
    for k in ("loss", "val_loss", "grad_norm"):
        if k in x:
            wl = max(wl, abs(x[k] - y[k]) / abs(x[k]))
def tensors(d):
    out = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        raw = open(f, "rb").read(); n = struct.unpack("<Q", raw[:8])[0]; h = json.loads(raw[8:8 + n])
        for k, v in h.items():
            if k == "__metadata__": continue
            s, e = v["data_offsets"]; fmt = {"F32": "f", "BF16": "H"}[v["dtype"]]
            vals = struct.unpack("<%d%s" % ((e - s) // struct.calcsize(fmt), fmt), raw[8 + n + s:8 + n + e])
            if fmt == "H": vals = [struct.unpack("<f", struct.pack("<I", x << 16))[0] for x in vals]
            out[k] = vals
    return out
ta, tb = tensors(a), tensors(b)
assert ta.keys() == tb.keys() and ta, (ta.keys(), tb.keys())
for k in ta:
    num = math.sqrt(sum((x - y) ** 2 for x, y in zip(ta[k], tb[k]))); den = math.sqrt(sum(x * x for x in ta[k])) or 1
    worst = max(worst, num / den)
print("losses and norms: worst rel diff %.2e; saved tensors %.2e" % (wl, worst))
assert wl <= tol_l and worst <= tol_w, (wl, worst)
PY
}
check() {  # check NAME A B TOL_LOSS TOL_WEIGHTS
  if out=$(compare "$2" "$3" "$4" "$5" 2>&1); then echo "ok   $1: $out"; else echo "FAIL $1: $out"; fails=$((fails + 1)); fi
}

finish() {
  if [ "$fails" -gt 0 ]; then echo "$fails check(s) failed"; exit 1; fi
  echo "all checks passed"
}
