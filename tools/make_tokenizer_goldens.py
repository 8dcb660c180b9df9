#!/usr/bin/env python3
"""Writes golden_llama2.jsonl / golden_llama3.jsonl for tests/test_bpe_tokenizer.cpp with the Hugging
Face `tokenizers` library: per corpus line {"ids", "ids_special", "decoded"}, and prints its
single-threaded encode speed over the corpus.

  python3 tools/make_tokenizer_goldens.py --assets build/assets \
      --corpus tests/fixtures/tokenizer/corpus.jsonl --out tests/fixtures/tokenizer/
"""
import argparse
import json
import os
import sys
import time

NAMES = {"llama2": "tokenizer-llama2", "llama3": "tokenizer-llama3"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", required=True, help="directory filled by scripts/fetch-assets.sh")
    ap.add_argument("--corpus", required=True, help="corpus.jsonl from tools/make_tokenizer_corpus.py")
    ap.add_argument("--out", required=True, help="output directory")
    args = ap.parse_args()
    # One thread, so the speed printed compares with a single-threaded encoder.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import tokenizers
    from tokenizers import Tokenizer

    with open(args.corpus, encoding="utf-8", newline="\n") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    os.makedirs(args.out, exist_ok=True)
    print(f"tokenizers {tokenizers.__version__}, {len(texts)} texts, {total_bytes} bytes", file=sys.stderr)
    for name, pkg in NAMES.items():
        path = os.path.join(args.assets, pkg, "package", "models", "tokenizer.json")
        tok = Tokenizer.from_file(path)
        rows = []
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False).ids
            ids_special = tok.encode(t, add_special_tokens=True).ids
            decoded = tok.decode(ids, skip_special_tokens=False)
            rows.append({"ids": ids, "ids_special": ids_special, "decoded": decoded})
        out = os.path.join(args.out, f"golden_{name}.jsonl")
        with open(out, "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        # Best of 3 passes of encode() one text at a time (no batch parallelism).
        best = float("inf")
        n_tokens = sum(len(r["ids"]) for r in rows)
        for _ in range(3):
            t0 = time.perf_counter()
            for t in texts:
                tok.encode(t, add_special_tokens=False)
            best = min(best, time.perf_counter() - t0)
        print(json.dumps({"tokenizer": name, "file": out, "lines": len(rows), "tokens": n_tokens,
                          "hf_tokens_per_s": round(n_tokens / best), "hf_mb_per_s": round(total_bytes / best / 1e6, 2)}))


if __name__ == "__main__":
    main()
