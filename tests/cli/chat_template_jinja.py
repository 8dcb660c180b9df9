#!/usr/bin/env python3
"""Renders the chat templates of tests/fixtures/chat_templates with Jinja as transformers does, for
tests/test_chat_template_jinja.cpp. Exit 77 when jinja2 is not installed; prints one JSON object."""
import argparse
import json
import os
import sys

try:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:
    print("chat_template_jinja: python3 jinja2 is not installed", file=sys.stderr)
    sys.exit(77)

# The special tokens each model's tokenizer_config.json gives the template.
TOKENS = {
    "llama2-chat": {"bos_token": "<s>", "eos_token": "</s>"},
    "mistral-instruct": {"bos_token": "<s>", "eos_token": "</s>"},
    "llama3-instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama3.1-instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "chatml": {"bos_token": "<s>", "eos_token": "<|im_end|>"},
}


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def environment():
    # transformers' chat template environment (utils/chat_template_utils.py).
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    return env


def render(template, messages, tokens, add_generation_prompt):
    try:
        return template.render(messages=messages, tools=None, documents=None,
                               add_generation_prompt=add_generation_prompt, **tokens)
    except jinja2.exceptions.TemplateError:
        return None  # the template refuses this conversation (e.g. a system turn for Mistral)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--templates", required=True, help="directory of NAME.jinja files")
    ap.add_argument("--cases", required=True, help="JSON list of {name, messages}; each ends with an assistant turn")
    a = ap.parse_args()
    try:
        with open(a.cases, encoding="utf-8") as f:
            cases = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"chat_template_jinja: {a.cases}: {e}")
    env, out = environment(), {}
    for name, tokens in TOKENS.items():
        path = os.path.join(a.templates, name + ".jinja")
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            template = env.from_string(source)
        except (OSError, jinja2.exceptions.TemplateSyntaxError) as e:
            sys.exit(f"chat_template_jinja: {path}: {e}")
        out[name] = {
            c["name"]: {"train": render(template, c["messages"], tokens, False),
                        "prompt": render(template, c["messages"][:-1], tokens, True)}
            for c in cases
        }
    json.dump({"jinja2": jinja2.__version__, "rendered": out}, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
