#!/usr/bin/env python3
"""Checks the built Llama 2 tokenizer.json with Hugging Face `tokenizers` against the ids of
tests/fixtures/llama2_goldens.jsonl (llama-tokenizer-js's encoder); one JSON line, exit 1 on mismatch."""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokenizer", default="build/assets/llama2-meta/tokenizer.json")
    ap.add_argument("--goldens", default="tests/fixtures/llama2_goldens.jsonl")
    a = ap.parse_args()
    try:
        from tokenizers import Tokenizer
    except ImportError:
        sys.exit("check_llama2_tokenizer: the Hugging Face `tokenizers` package is not installed")
    try:
        tok = Tokenizer.from_file(a.tokenizer)
    except Exception as e:  # tokenizers raises its own exception types
        sys.exit(f"check_llama2_tokenizer: {a.tokenizer}: {e}")
    rows = []
    try:
        with open(a.goldens, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        sys.exit(f"check_llama2_tokenizer: {a.goldens}:{n}: invalid JSON")
    except OSError as e:
        sys.exit(f"check_llama2_tokenizer: {a.goldens}: {e.strerror}")
    match = mismatch = special_mismatch = 0
    examples = []
    for r in rows:
        ids = tok.encode(r["text"], add_special_tokens=False).ids
        with_bos = tok.encode(r["text"], add_special_tokens=True).ids
        if ids == r["ids"]:
            match += 1
        else:
            mismatch += 1
            if len(examples) < 5:
                examples.append({"text": r["text"], "hf": ids, "golden": r["ids"]})
        special_mismatch += with_bos != [1] + r["ids"]
    known = tok.token_to_id("\u2581Hello") == 15043 and tok.encode("Hello world", add_special_tokens=False).ids == [15043, 3186]
    ok = mismatch == 0 and special_mismatch == 0 and known and len(rows) > 0
    print(json.dumps({"check": "llama2_tokenizer", "tokenizer": a.tokenizer, "rows": len(rows), "match": match,
                      "mismatch": mismatch, "special_mismatch": special_mismatch, "known_ids": known,
                      "examples": examples, "ok": ok}, ensure_ascii=False))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
