#!/usr/bin/env python3
"""Writes a benchmark dataset as pyarrow does by default (snappy, dictionary, several row groups):
NROWS rows of {"instruction", "input", "output"} text, deterministic.
    python3 bench/make_bench_parquet.py OUT.parquet [NROWS]
"""
import random
import sys

import pyarrow as pa
import pyarrow.parquet as pq

words = ("the of and to in is was for on that with as by at from his her it an were are which this be or "
         "has had not but have its one all they been their more also first new after who other time two when "
         "model data train token layer weight gradient memory loss batch sequence attention head").split()
rng = random.Random(7)
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100000
sent = lambda k: " ".join(rng.choice(words) for _ in range(k)).capitalize() + "."
table = pa.table({
    "instruction": [sent(rng.randint(5, 30)) for _ in range(n)],
    "input": [sent(rng.randint(0, 40)) if rng.random() < 0.5 else "" for _ in range(n)],
    "output": [" ".join(sent(rng.randint(5, 25)) for _ in range(rng.randint(1, 6))) for _ in range(n)],
})
pq.write_table(table, sys.argv[1], row_group_size=20000)
print(sys.argv[1], n, "rows")
