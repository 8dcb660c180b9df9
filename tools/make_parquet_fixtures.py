#!/usr/bin/env python3
"""Writes small Parquet files with pyarrow, each with its expected rows, for tests/test_parquet.cpp.

Usage: python3 tools/make_parquet_fixtures.py --out tests/fixtures/parquet

For every NAME.parquet it writes NAME.expected.jsonl: pyarrow's to_pylist() rows, one JSON object
a line (ensure_ascii=False). The files cover dictionary on/off, every codec the reader supports,
several row groups, small data pages, v2 data pages, nulls, int64 lists and a chat `messages`
list<struct<role, content>> column. Everything stays well under 1 MiB.
"""
import argparse
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq


def make_table(n, seed):
    rnd = random.Random(seed)
    words = ["hello", "wörld", "naïve", "日本語", "emoji 🙂", "tab\tand \"quotes\"", "x" * 40, ""]
    ids, texts, scores, flags, input_ids, messages, ratios = [], [], [], [], [], [], []
    for i in range(n):
        ids.append(None if rnd.random() < 0.15 else rnd.randint(-2**31, 2**31 - 1))
        texts.append(None if rnd.random() < 0.2 else " ".join(rnd.choice(words) for _ in range(rnd.randint(0, 6))))
        scores.append(None if rnd.random() < 0.1 else rnd.uniform(-1e3, 1e3))
        ratios.append(rnd.random())
        flags.append(None if rnd.random() < 0.1 else rnd.random() < 0.5)
        k = rnd.randint(-1, 12)
        input_ids.append(None if k < 0 else [rnd.randint(0, 2**40) for _ in range(k)])
        m = rnd.randint(-1, 4)
        if m < 0:
            messages.append(None)
        else:
            turns = []
            for t in range(m):
                role = ["system", "user", "assistant"][t % 3]
                content = None if rnd.random() < 0.1 else rnd.choice(words) + f" #{i}.{t}"
                turns.append({"role": role, "content": content})
            messages.append(turns)
    msg_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return pa.table({
        "id": pa.array(ids, pa.int32()),
        "text": pa.array(texts, pa.string()),
        "score": pa.array(scores, pa.float64()),
        "ratio": pa.array(ratios, pa.float32()),
        "flag": pa.array(flags, pa.bool_()),
        "input_ids": pa.array(input_ids, pa.list_(pa.int64())),
        "messages": pa.array(messages, msg_type),
    })


CASES = [
    # name, rows, write_table keyword arguments
    ("plain_none", 40, dict(compression="NONE", use_dictionary=False)),
    ("dict_snappy", 60, dict(compression="SNAPPY", use_dictionary=True)),
    ("dict_gzip", 60, dict(compression="GZIP", use_dictionary=True)),
    ("plain_zstd", 60, dict(compression="ZSTD", use_dictionary=False)),
    ("row_groups", 120, dict(compression="SNAPPY", row_group_size=25)),
    ("small_pages", 150, dict(compression="ZSTD", data_page_size=256, write_batch_size=16)),
    ("v2_pages", 90, dict(compression="SNAPPY", data_page_version="2.0", data_page_size=512, write_batch_size=16)),
    ("v2_plain_none", 50, dict(compression="NONE", data_page_version="2.0", use_dictionary=False)),
    ("defaults", 80, dict()),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for i, (name, rows, kw) in enumerate(CASES):
        table = make_table(rows, seed=1000 + i)
        path = os.path.join(args.out, name + ".parquet")
        pq.write_table(table, path, **kw)
        back = pq.read_table(path).to_pylist()
        with open(os.path.join(args.out, name + ".expected.jsonl"), "w", encoding="utf-8") as f:
            for row in back:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        total += os.path.getsize(path) + os.path.getsize(os.path.join(args.out, name + ".expected.jsonl"))
        print(f"{path}: {rows} rows, {pq.ParquetFile(path).metadata.num_row_groups} row groups")
    print(f"total {total} bytes")
    assert total < 1 << 20, "fixtures exceed 1 MiB"


if __name__ == "__main__":
    main()
