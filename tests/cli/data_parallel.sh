# Data parallelism on the CPU over Gloo: 2 and 4 ranks with grad_accum g compute what one rank
# computes with grad_accum ranks x g (the same micro-batches, dropout masks and normalisation), by
# every launch route ftune honours; rank failures and mismatches end every rank with a clear error.
source "$(dirname "$0")/lib.bash" "$@"
make_model "$WORK/model"
head -96 "$ROOT/examples/quickstart/train.jsonl" >"$WORK/d.jsonl"
write_recipe "$WORK/r.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/one" "  lr: 1e-2" "  grad_accum: 4" "  eval_every: 3" \
  "lora:" "  dropout: 0.1" "dist:" "  timeout_s: 20"
sed -i 's/^  max_steps: 2$/  max_steps: 6/; s/^data:$/data:\n  val_fraction: 0.1/' "$WORK/r.yaml"
"$FTUNE" train "$WORK/r.yaml" 2>/dev/null
# One micro-batch per rank and step: the all-reduce adds the ranks' gradients in rank order, which
# is the order one rank accumulates its micro-batches in, so the runs are bit for bit the same.
"$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/four" --set train.grad_accum=1 --nproc-per-node 4 2>"$WORK/log4" \
  || { echo "FAIL 4 ranks: $(tail -3 "$WORK/log4")"; fails=$((fails + 1)); }
check "4 ranks x 1 micro-batch = 1 rank x 4, bit for bit" "$WORK/one" "$WORK/four" 0 0
grep -q "4 ranks (4 per node" "$WORK/log4" && echo "ok   the log says 4 ranks" || { echo "FAIL log: $(head -3 "$WORK/log4")"; fails=$((fails + 1)); }
# Two micro-batches per rank: each rank first sums its own (g0 + g2, g1 + g3), so the total is
# added in another order than one rank's ((g0 + g1) + g2) + g3: equal to fp32 rounding (~1e-7 per
# element). Adam then moves each weight by about lr x sign(gradient), so weights whose gradient is
# within rounding of zero can step apart: losses within 1e-5 (measured 2.6e-6) and saved tensors
# within 1e-4 (measured 4.6e-5) after 6 steps at lr 1e-2.
"$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/two" --set train.grad_accum=2 --nproc-per-node 2 2>"$WORK/log2" \
  || { echo "FAIL 2 ranks: $(tail -3 "$WORK/log2")"; fails=$((fails + 1)); }
check "2 ranks x 2 micro-batches = 1 rank x 4, LoRA with dropout" "$WORK/one" "$WORK/two" 1e-5 1e-4
# Full fine-tuning, data parallel, one micro-batch per rank: the per-step losses are bit for bit;
# the weight-gradient GEMMs of one rank accumulate into the gradient buffer (beta 1) where each of
# two ranks starts from zero, so the sums round differently: saved weights within 1e-6 (measured 9e-8).
grep -v "^lora:\|^  dropout:" "$WORK/r.yaml" >"$WORK/f.yaml"
sed -i 's/^  lr: 1e-2$/  lr: 1e-3\n  method: full/; s/^  grad_accum: 4$/  grad_accum: 2/' "$WORK/f.yaml"
"$FTUNE" train "$WORK/f.yaml" --set output_dir="$WORK/full1" 2>/dev/null
"$FTUNE" train "$WORK/f.yaml" --set output_dir="$WORK/full2" --set train.grad_accum=1 --nproc-per-node 2 2>"$WORK/logf" \
  || { echo "FAIL full 2 ranks: $(tail -3 "$WORK/logf")"; fails=$((fails + 1)); }
check "full fine-tuning, 2 ranks = 1 rank" "$WORK/full1" "$WORK/full2" 0 1e-6

# ZeRO 1 and 2: each rank steps its shard of the masters and moments (stage 2 also receives only its
# part of the summed gradients); element for element the data-parallel run's arithmetic, and the
# gradient norm assembled in the same chunk order: bit for bit the dist.zero 0 run.
for z in 1 2; do
  "$FTUNE" train "$WORK/f.yaml" --set output_dir="$WORK/zero$z" --set train.grad_accum=1 --set dist.zero=$z \
    --set train.save_every=3 --nproc-per-node 2 2>"$WORK/logz$z" || { echo "FAIL zero $z: $(tail -3 "$WORK/logz$z")"; fails=$((fails + 1)); }
  check "full fine-tuning, 2 ranks, dist.zero $z = dist.zero 0" "$WORK/full2" "$WORK/zero$z" 0 0
done
# A ZeRO-2 checkpoint (the shards gathered into one state) resumes on 2 ranks to the same end.
"$FTUNE" train "$WORK/f.yaml" --set output_dir="$WORK/zero2r" --set train.grad_accum=1 --set dist.zero=2 \
  --resume "$WORK/zero2/checkpoints/step-00000003" --nproc-per-node 2 2>"$WORK/logz2r" \
  || { echo "FAIL zero 2 resume: $(tail -3 "$WORK/logz2r")"; fails=$((fails + 1)); }
check "dist.zero 2 resumed from step 3 = uninterrupted" "$WORK/zero2" "$WORK/zero2r" 0 0

# ZeRO 3: each rank keeps a piece of every unit's weights, gathers a unit before it runs and
# reduce-scatters its gradient as soon as its backward ends. With one micro-batch per rank the
# gradients are the data-parallel run's bits: each rank's micro-batch starts from zero and the
# reduce-scatter sums the ranks in the all-reduce's order (this lm_head is not tied, so no unit's
# gradient comes in two shares). The global norm adds the ranks' sums of squares in another order,
# a change of a few 1e-15 relative (2.8e-15 in test_dist_zero), far below the fp32 rounding (6e-8)
# of the clipping coefficient: bit for bit the dist.zero 0 run on 2 ranks, and so as close to one
# rank as it (weights measured 9.2e-8). The 9 validation rows are 5 micro-batches, so in every
# evaluation rank 0 runs one forward more than the others, which join its gathers without rows.
"$FTUNE" train "$WORK/f.yaml" --set output_dir="$WORK/z3" --set train.grad_accum=1 --set dist.zero=3 \
  --set train.save_every=3 --nproc-per-node 2 2>"$WORK/logz3" || { echo "FAIL zero 3: $(tail -3 "$WORK/logz3")"; fails=$((fails + 1)); }
check "full fine-tuning, 2 ranks, dist.zero 3 = dist.zero 0" "$WORK/full2" "$WORK/z3" 0 0
check "full fine-tuning, 2 ranks, dist.zero 3 = 1 rank" "$WORK/full1" "$WORK/z3" 0 1e-6
# Four micro-batches a step: one rank adds them onto its gradient one after another, ZeRO 3 sums
# each over the ranks first (4 ranks x 1) or adds the ranks' sums of two (2 ranks x 2), so the
# gradients round differently: measured losses and norms 1.8e-7 (one unit of the sixth digit the
# metrics keep), saved tensors 3.3e-7 (4 x 1) and 1.3e-7 (2 x 2); bounds 1e-6, 3 times the worst.
"$FTUNE" train "$WORK/f.yaml" --set output_dir="$WORK/full4" --set train.grad_accum=4 2>/dev/null
"$FTUNE" train "$WORK/f.yaml" --set output_dir="$WORK/z3x4" --set train.grad_accum=1 --set dist.zero=3 \
  --nproc-per-node 4 2>"$WORK/logz3x4" || { echo "FAIL zero 3, 4 ranks: $(tail -3 "$WORK/logz3x4")"; fails=$((fails + 1)); }
check "dist.zero 3, 4 ranks x 1 micro-batch = 1 rank x 4" "$WORK/full4" "$WORK/z3x4" 1e-6 1e-6
"$FTUNE" train "$WORK/f.yaml" --set output_dir="$WORK/z3x2" --set train.grad_accum=2 --set dist.zero=3 \
  --nproc-per-node 2 2>"$WORK/logz3x2" || { echo "FAIL zero 3, 2 x 2: $(tail -3 "$WORK/logz3x2")"; fails=$((fails + 1)); }
check "dist.zero 3, 2 ranks x 2 micro-batches = 1 rank x 4" "$WORK/full4" "$WORK/z3x2" 1e-6 1e-6
# A ZeRO-3 checkpoint holds the whole state in the parameter table's layout: resumed on 2 ranks it
# ends as the uninterrupted run, bit for bit, under dist.zero 3 and under dist.zero 0 (the same bits
# per step, as above).
for z in 3 0; do
  "$FTUNE" train "$WORK/f.yaml" --set output_dir="$WORK/z3r$z" --set train.grad_accum=1 --set dist.zero=$z \
    --resume "$WORK/z3/checkpoints/step-00000003" --nproc-per-node 2 2>"$WORK/logz3r$z" \
    || { echo "FAIL zero 3 resumed under $z: $(tail -3 "$WORK/logz3r$z")"; fails=$((fails + 1)); }
  check "dist.zero 3 resumed from step 3 under dist.zero $z = uninterrupted" "$WORK/z3" "$WORK/z3r$z" 0 0
done
expect_fail zero-lora "dist\.zero=1 shards full fine-tuning's optimizer state; train\.method lora" \
  "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/zl" --set dist.zero=1

# The variables launchers set, each rank started by hand.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
two_ranks() {  # two_ranks OUT RECIPE VARS-OF-RANK-0 -- VARS-OF-RANK-1: runs both, waits, sets rc
  local out=$1 recipe=$2; shift 2
  local v0=() v1=() side=0
  for x in "$@"; do if [ "$x" = "--" ]; then side=1; elif [ $side -eq 0 ]; then v0+=("$x"); else v1+=("$x"); fi; done
  env "${v0[@]}" "$FTUNE" train "$recipe" --set output_dir="$out" --set train.grad_accum=2 2>"$out.log0" & local p0=$!
  env "${v1[@]}" "$FTUNE" train "$recipe" --set output_dir="$out" --set train.grad_accum=2 2>"$out.log1" & local p1=$!
  # (2 ranks x 2 micro-batches: compared with the --nproc-per-node run of the same shape, bit for bit)
  rc=0; wait $p0 || rc=$?; wait $p1 || rc=$?
}
P=$(port)
two_ranks "$WORK/tr" "$WORK/r.yaml" RANK=0 LOCAL_RANK=0 WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P -- \
  RANK=1 LOCAL_RANK=1 WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P
[ $rc -eq 0 ] && check "torchrun's variables" "$WORK/two" "$WORK/tr" 0 0 || { echo "FAIL torchrun env: $(tail -2 "$WORK/tr.log0")"; fails=$((fails + 1)); }
P=$(port)  # ZeRO 3 from the recipe, 2 x 2 micro-batches: the --nproc-per-node run's bits
sed 's/^dist:$/dist:\n  zero: 3/' "$WORK/f.yaml" >"$WORK/z3.yaml"
two_ranks "$WORK/trz3" "$WORK/z3.yaml" RANK=0 LOCAL_RANK=0 WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P -- \
  RANK=1 LOCAL_RANK=1 WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P
[ $rc -eq 0 ] && check "torchrun's variables, dist.zero 3" "$WORK/z3x2" "$WORK/trz3" 0 0 || { echo "FAIL torchrun env, zero 3: $(tail -2 "$WORK/trz3.log0")"; fails=$((fails + 1)); }
P=$(port)
# A PyTorchJob of two pods with one process each: RANK is the pod index, PET_* as its torchrun would read them.
two_ranks "$WORK/pet" "$WORK/r.yaml" PET_NNODES=2 PET_NPROC_PER_NODE=1 PET_NODE_RANK=0 RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P -- \
  PET_NNODES=2 PET_NPROC_PER_NODE=1 PET_NODE_RANK=1 RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P
[ $rc -eq 0 ] && check "Kubeflow PyTorchJob's variables" "$WORK/two" "$WORK/pet" 0 0 || { echo "FAIL PET env: $(tail -2 "$WORK/pet.log0")"; fails=$((fails + 1)); }
P=$(port)
two_ranks "$WORK/slurm" "$WORK/r.yaml" SLURM_PROCID=0 SLURM_NTASKS=2 SLURM_NNODES=1 SLURM_NODEID=0 SLURM_LOCALID=0 SLURM_NTASKS_PER_NODE=2 SLURM_NODELIST=localhost MASTER_PORT=$P -- \
  SLURM_PROCID=1 SLURM_NTASKS=2 SLURM_NNODES=1 SLURM_NODEID=0 SLURM_LOCALID=1 SLURM_NTASKS_PER_NODE=2 SLURM_NODELIST=localhost MASTER_PORT=$P
[ $rc -eq 0 ] && check "Slurm's variables" "$WORK/two" "$WORK/slurm" 0 0 || { echo "FAIL Slurm env: $(tail -2 "$WORK/slurm.log0")"; fails=$((fails + 1)); }

# Preemption of a data-parallel run: the launcher passes SIGTERM to every rank, they stop after the
# same step, rank 0 writes the checkpoint, and the resumed 2-rank run ends as the uninterrupted one.
write_recipe "$WORK/p.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/pre" "  lr: 1e-3" "  grad_accum: 2" "dist:" "  timeout_s: 20"
sed -i 's/^  max_steps: 2$/  max_steps: 60/' "$WORK/p.yaml"
"$FTUNE" train "$WORK/p.yaml" --set output_dir="$WORK/pref" --nproc-per-node 2 2>/dev/null
"$FTUNE" train "$WORK/p.yaml" --nproc-per-node 2 >"$WORK/plog" 2>&1 & lp=$!
for _ in $(seq 1 500); do [ -s "$WORK/pre/.ftune-partial/metrics.jsonl" ] && break; sleep 0.01; done
kill -TERM $lp
rc=0; wait $lp || rc=$?
if [ $rc -eq 0 ]; then echo "skip data-parallel preemption: the run ended first"; else
  judge dp-preempted "stopped by signal 15 after step [0-9]+ of 60: checkpoint .*step-[0-9]+ written" "$((rc == 75 ? 1 : 0))" \
    "$(grep 'stopped by signal.*step-0' "$WORK/plog" | head -1)"
  "$FTUNE" train "$WORK/p.yaml" --resume --nproc-per-node 2 2>"$WORK/plog2" || { echo "FAIL dp resume: $(tail -2 "$WORK/plog2")"; fails=$((fails + 1)); }
  check "2 ranks preempted and resumed = uninterrupted" "$WORK/pref" "$WORK/pre" 0 0
fi

# Failures: each a clear error, within the timeout, on every rank.
P=$(port)
expect_fail_last missing-rank "1 of 2 ranks arrived" env RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P \
  "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/miss" --set dist.timeout_s=3
P=$(port)
expect_fail_last unreachable "127\.0\.0\.1:$P.* (unreachable|refused|not reach)" env RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P \
  "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/unr" --set dist.timeout_s=2
P=$(port)
python3 -c "import socket,time; s=socket.socket(); s.bind(('127.0.0.1', $P)); s.listen(); time.sleep(8)" & holder=$!
sleep 0.3
expect_fail_last port-taken "MASTER_PORT $P is in use" env RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P \
  "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/taken" --set dist.timeout_s=2
kill $holder 2>/dev/null || true
P=$(port)  # one rank's recipe differs (its lr)
env RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/mm" --set dist.timeout_s=5 2>"$WORK/mm0" & p0=$!
env RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$P "$FTUNE" train "$WORK/r.yaml" --set output_dir="$WORK/mm" --set dist.timeout_s=5 --set train.lr=2e-2 2>"$WORK/mm1" & p1=$!
rc0=0; rc1=0; wait $p0 || rc0=$?; wait $p1 || rc1=$?
judge recipe-mismatch "rank 1's recipe differs from rank 0's" $((rc0 + rc1)) "$(cat "$WORK/mm0" "$WORK/mm1" | grep error | head -1)"
# A rank killed mid-run: the launcher stops the others and reports it.
write_recipe "$WORK/long.yaml" "$WORK/model" "$WORK/d.jsonl" "$WORK/long" "  grad_accum: 2" "dist:" "  timeout_s: 20"
sed -i 's/^  max_steps: 2$/  max_steps: 2000/' "$WORK/long.yaml"
"$FTUNE" train "$WORK/long.yaml" --nproc-per-node 2 >"$WORK/klog" 2>&1 & lp=$!
for _ in $(seq 1 500); do [ -s "$WORK/long/.ftune-partial/metrics.jsonl" ] && break; sleep 0.02; done
victim=$(pgrep -P $lp | tail -1); [ -n "$victim" ] && kill -KILL "$victim"
rc=0; wait $lp || rc=$?
# (When rank 0 fails on the broken connection before the launcher reaps rank 1, either may be
# reported first; the launcher names both.)
judge killed-rank "rank 1 ended with status 137" "$rc" "$(grep -m1 'rank 1 ended with status' "$WORK/klog")"
judge survivor-error "all_reduce: the connection to rank 1 failed" "$rc" "$(grep -m1 'error' "$WORK/klog")"
finish
