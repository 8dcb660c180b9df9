#!/usr/bin/env python3
"""HF `tokenizers` throughput on the same corpus as bench_tokenize: encode() one line at a time on
one thread, and encode_batch() over all cores. Prints JSON lines.
    python3 bench/peer_tokenize.py TOKENIZER_JSON CORPUS.jsonl
"""
import json
import os
import sys
import time

from tokenizers import Tokenizer


def main():
    tok = Tokenizer.from_file(sys.argv[1])
    lines = [json.loads(l)["text"] for l in open(sys.argv[2], encoding="utf-8") if l.strip()]
    nbytes = sum(len(s.encode("utf-8")) for s in lines)
    for mode in ("single", "batch"):
        passes, tokens, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < 2.0:
            if mode == "single":
                tokens += sum(len(tok.encode(s, add_special_tokens=False).ids) for s in lines)
            else:
                tokens += sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False))
            passes += 1
        secs = time.perf_counter() - t0
        print(json.dumps({"bench": "tokenize_peer", "tokenizer": sys.argv[1], "mode": mode,
                          "threads": 1 if mode == "single" else os.cpu_count(),
                          "mb_per_s": round(nbytes * passes / secs / 1e6, 2), "tokens_per_s": round(tokens / secs)}))


if __name__ == "__main__":
    main()
