#!/usr/bin/env python3
"""Builds Meta's Llama 2 tokenizer.json (Hugging Face `tokenizers` format) from the vocabulary and
merges that the llama-tokenizer-js package embeds in llama-tokenizer.js. Plain python3, no modules."""
import argparse
import base64
import json
import os
import re
import struct
import sys

SPECIALS = ["<unk>", "<s>", "</s>"]


def die(path, msg):
    sys.exit(f"make_llama2_tokenizer: {path}: {msg}")


def blob(path, text, name):
    m = re.search(r'const %s = "([A-Za-z0-9+/=]+)"' % name, text)
    if not m:
        die(path, f"no `const {name} = \"...\"` string found")
    return base64.b64decode(m.group(1))


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        die(path, e.strerror or str(e))
    vocab = blob(path, text, "llama_vocab_base64").decode("utf-8").split("\n")
    raw = blob(path, text, "llama_merges_binary")
    if len(raw) % 4:
        die(path, f"merges blob has {len(raw)} bytes, not a multiple of 4")
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = []
    for k in range(0, len(ids), 2):
        a, b = ids[k], ids[k + 1]
        if a >= len(vocab) or b >= len(vocab):
            die(path, f"merge {k // 2} refers to id {max(a, b)} outside the {len(vocab)}-token vocabulary")
        merges.append(vocab[a] + " " + vocab[b])
    # What Meta's Llama 2 vocabulary must look like; anything else is not that file.
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    if len(vocab) != 32000 or vocab[:3] != SPECIALS or vocab[3:259] != bytes_ or len(set(vocab)) != 32000:
        die(path, f"not the Llama 2 vocabulary ({len(vocab)} tokens; want 32000 unique, <unk> <s> </s> then <0x00>..<0xFF>)")
    if vocab[15043] != "\u2581Hello" or vocab[29871] != "\u2581":
        die(path, "not the Llama 2 vocabulary (id 15043 is not \"\u2581Hello\")")
    return vocab, merges


def tokenizer_json(vocab, merges):
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(SPECIALS)]
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
                  "vocab": {t: i for i, t in enumerate(vocab)}, "merges": merges},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--js", required=True, help="llama-tokenizer.js of the llama-tokenizer-js package")
    ap.add_argument("--out", required=True, help="tokenizer.json to write")
    a = ap.parse_args()
    vocab, merges = load(a.js)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(vocab, merges), f, ensure_ascii=False, indent=None, separators=(",", ":"))
    os.replace(tmp, a.out)
    print(json.dumps({"tokenizer": a.out, "vocab": len(vocab), "merges": len(merges)}))


if __name__ == "__main__":
    main()
