#!/usr/bin/env python3
"""Token ids of the chat-template fixtures as transformers makes them, for ftune's template test.

For each template of tests/fixtures/chat_templates with the real tokenizer of its model family
(fetched by scripts/fetch-assets.sh), every conversation of cases.json is rendered as
`tokenizer.apply_chat_template` renders it and tokenized as it tokenizes the rendering
(`add_special_tokens=False`, the special tokens in the text recognised), whole (training) and
without its last answer with add_generation_prompt (the prompt). A conversation the template
refuses (Mistral's system turn) is null. Writes OUT (tests/fixtures/chat_templates/golden_ids.json).

    python3 tools/make_chat_template_goldens.py --assets build/assets \
        [--out tests/fixtures/chat_templates/golden_ids.json]
"""
import argparse
import json
import os

from transformers import PreTrainedTokenizerFast

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "chat_templates")
# template fixture -> (tokenizer.json under --assets, bos, eos)
PAIRS = {
    "llama2-chat": ("llama2-meta/tokenizer.json", "<s>", "</s>"),
    "mistral-instruct": ("tokenizer-llama2/package/models/tokenizer.json", "<s>", "</s>"),
    "llama3-instruct": ("tokenizer-llama3/package/models/tokenizer.json", "<|begin_of_text|>", "<|eot_id|>"),
    "llama3.1-instruct": ("tokenizer-llama3/package/models/tokenizer.json", "<|begin_of_text|>", "<|eot_id|>"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--assets", required=True)
    ap.add_argument("--out", default=os.path.join(HERE, "golden_ids.json"))
    a = ap.parse_args()
    with open(os.path.join(HERE, "cases.json"), encoding="utf-8") as f:
        cases = json.load(f)
    out = {}
    for name, (tok_file, bos, eos) in PAIRS.items():
        with open(os.path.join(HERE, name + ".jinja"), encoding="utf-8") as f:
            template = f.read()
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(a.assets, tok_file), bos_token=bos, eos_token=eos)

        def ids(messages, prompt):
            try:
                text = tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                               add_generation_prompt=prompt)
            except Exception as e:  # the template's raise_exception
                if "TemplateError" in type(e).__name__ or "raise_exception" in str(e) or "roles" in str(e):
                    return None
                raise
            return tok(text, add_special_tokens=False)["input_ids"]

        out[name] = {c["name"]: {"train": ids(c["messages"], False), "prompt": ids(c["messages"][:-1], True)}
                     for c in cases}
    import transformers
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "ids": out}, f)
        f.write("\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
