#!/usr/bin/env python3
"""Checks that a LoRA adapter written by ftune loads in peft and reproduces ftune's logits.

GOLDEN is a safetensors file with input_ids (I64 [B,T]) and logits (F32 [B,T,V]) computed by
ftune, e.g. by `ftune logits --model DIR --adapter ADAPTER --input rows.jsonl --out GOLDEN`.
Loads the base model with transformers and the adapter with peft, checks that every tensor of
adapter_model.safetensors was loaded into a LoRA parameter (and nothing else is left), runs the
model in float64 and compares its logits with GOLDEN. Prints one JSON line; exits 1 on failure.

    python3 tools/check_peft_adapter.py --model DIR --adapter DIR --golden logits.safetensors
"""
import argparse
import json
import math
import os
import sys
import traceback
import warnings

import torch

from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def saved_key(param_name, adapter_name="default"):
    """peft parameter name -> key in adapter_model.safetensors (the adapter name is dropped)."""
    parts = param_name.split(".")
    out = []
    for i, p in enumerate(parts):
        if p == adapter_name and i > 0 and parts[i - 1].startswith("lora_"):
            continue
        out.append(p)
    return ".".join(out)


def finite_or_none(x):
    """NaN and infinities are not JSON: they are written as null (and the check fails)."""
    return x if math.isfinite(x) else None


def is_key_warning(message):
    m = message.lower()
    return "keys" in m and ("missing" in m or "unexpected" in m)


def load_base(model_dir):
    """The base model in float32 with eager attention, and what transformers reports about keys.
    `dtype` is the argument's name in transformers 5, `torch_dtype` before."""
    loaded, last_error = None, None
    for dtype_arg in ("dtype", "torch_dtype"):
        for info_arg in (True, False):
            kw = {dtype_arg: torch.float32, "attn_implementation": "eager"}
            if info_arg:
                kw["output_loading_info"] = True
            try:
                loaded = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
                break
            except TypeError as e:
                last_error = e
        if loaded is not None:
            break
    if loaded is None:
        raise last_error
    if isinstance(loaded, tuple):
        model, info = loaded
    else:
        model, info = loaded, {}
    info = {k: sorted(str(x) for x in v)[:5] for k, v in dict(info).items()
            if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    return model, info


def check(args):
    result = {"check": "peft_adapter", "adapter": args.adapter, "model": args.model, "golden": args.golden}
    adapter_file = os.path.join(args.adapter, "adapter_model.safetensors")
    if not os.path.isfile(adapter_file):
        result.update(ok=False, error="no adapter_model.safetensors in " + args.adapter)
        return result

    base, base_info = load_base(args.model)
    if base_info:
        result["base_loading"] = base_info  # reported; the logits comparison decides
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, args.adapter)
    key_warnings = [str(w.message)[:300] for w in caught if is_key_warning(str(w.message))]
    model = model.double().eval()

    # Every tensor of the file went into a LoRA parameter of the model, with the file's value.
    saved = load_file(adapter_file)
    params = {saved_key(n): p for n, p in model.named_parameters() if "lora_" in n}
    missing = sorted(set(params) - set(saved))
    unexpected = sorted(set(saved) - set(params))
    mismatched = sorted(k for k in saved if k in params and
                        (tuple(params[k].shape) != tuple(saved[k].shape) or
                         not torch.equal(params[k].detach().double(), saved[k].double())))
    n_b = sum(1 for k in saved if ".lora_B." in k)
    result.update(tensors=len(saved), lora_B_tensors=n_b, missing=missing[:5], unexpected=unexpected[:5],
                  mismatched=mismatched[:5], key_warnings=key_warnings[:3])

    golden = load_file(args.golden)
    for k in ("input_ids", "logits"):
        if k not in golden:
            result.update(ok=False, error="%s has no %r tensor" % (args.golden, k))
            return result
    ids = golden["input_ids"].long()
    ref = golden["logits"].double()
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    if tuple(logits.shape) != tuple(ref.shape):
        result.update(ok=False, error="logits shape %s, golden %s" % (list(logits.shape), list(ref.shape)))
        return result
    diff = logits - ref
    ref_norm = float(torch.linalg.vector_norm(ref))
    rel = float(torch.linalg.vector_norm(diff)) / ref_norm if ref_norm > 0 else float("inf")
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    ok = (rel < args.tol and bool(torch.isfinite(ref).all()) and n_b > 0 and not missing and not unexpected
          and not mismatched and not key_warnings)
    result.update(shape=list(ref.shape), rel_err=finite_or_none(rel), max_abs_err=finite_or_none(max_abs),
                  tol=args.tol, ok=bool(ok))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="base model folder (config.json + safetensors)")
    ap.add_argument("--adapter", required=True, help="adapter folder written by ftune")
    ap.add_argument("--golden", required=True, help="safetensors file with input_ids and ftune's logits")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest accepted ||peft - ftune|| / ||ftune||")
    args = ap.parse_args()
    try:
        result = check(args)
    except Exception as e:  # noqa: BLE001 - any failure is reported as one JSON line
        traceback.print_exc()
        result = {"check": "peft_adapter", "adapter": args.adapter, "ok": False,
                  "error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(result), flush=True)
    sys.exit(0 if result.get("ok") else 1)


if __name__ == "__main__":
    main()
