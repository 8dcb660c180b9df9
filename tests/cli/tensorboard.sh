# train.report_to: [tensorboard]: event files whose records decode (TFRecord framing with CRC-32C, protobuf
# tensorflow.Event) into the same losses as metrics.jsonl, read by an independent decoder.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
head -80 "$ROOT/examples/quickstart/train.jsonl" >"$WORK/d.jsonl"
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/out" "  eval_every: 3" "  report_to: [jsonl, tensorboard]"
sed -i 's/^  max_steps: 2$/  max_steps: 6/; s/^  max_seq_len: 32$/  max_seq_len: 32\n  val_fraction: 0.2/' "$WORK/r.yaml"
"$FTUNE" train "$WORK/r.yaml" 2>/dev/null
python3 - "$WORK/out" <<'PY' && echo "ok   event file decodes to metrics.jsonl's values" || { echo "FAIL tensorboard events"; fails=$((fails + 1)); }
import glob, json, struct, sys
out = sys.argv[1]
files = glob.glob(out + "/tensorboard/events.out.tfevents.*")
assert len(files) == 1, files
def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c ^= x
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF
def masked(b):
    c = crc32c(b)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
def varint(b, i):
    v = s = 0
    while True:
        x = b[i]; i += 1; v |= (x & 0x7F) << s; s += 7
        if x < 0x80: return v, i
def fields(b):
    i, out = 0, []
    while i < len(b):
        key, i = varint(b, i); f, w = key >> 3, key & 7
        if w == 0: v, i = varint(b, i)
        elif w == 1: v = struct.unpack('<d', b[i:i + 8])[0]; i += 8
        elif w == 5: v = struct.unpack('<f', b[i:i + 4])[0]; i += 4
        elif w == 2: n, i = varint(b, i); v = b[i:i + n]; i += n
        else: raise ValueError(w)
        out.append((f, v))
    return out
data = open(files[0], 'rb').read()
i, events = 0, []
while i < len(data):
    (n,) = struct.unpack('<Q', data[i:i + 8])
    assert struct.unpack('<I', data[i + 8:i + 12])[0] == masked(data[i:i + 8])
    rec = data[i + 12:i + 12 + n]
    assert struct.unpack('<I', data[i + 12 + n:i + 16 + n])[0] == masked(rec)
    events.append(dict((f, v) for f, v in fields(rec))); i += 16 + n
assert events[0][3] == b"brain.Event:2"
scalars = {}
for e in events[1:]:
    for f, v in fields(e[5]):
        d = dict(fields(v))
        scalars[(d[1].decode(), e[2])] = d[2]
metrics = [json.loads(l) for l in open(out + "/metrics.jsonl")]
n_train = n_val = 0
for m in metrics:
    if "loss" in m:
        assert abs(scalars[("train/loss", m["step"])] - m["loss"]) <= 1e-5 * abs(m["loss"]) + 1e-6; n_train += 1
    if "val_loss" in m:
        assert abs(scalars[("eval/loss", m["step"])] - m["val_loss"]) <= 1e-5 * abs(m["val_loss"]) + 1e-6; n_val += 1
assert n_train == 6 and n_val == 2, (n_train, n_val)
assert ("train/lr", 6) in scalars and ("eval/perplexity", 6) in scalars
PY
finish
