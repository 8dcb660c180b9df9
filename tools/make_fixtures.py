#!/usr/bin/env python3
"""Golden numbers for ftune's CPU reference, computed by transformers + peft.

For each case, builds a tiny random Llama with transformers, saves it with save_pretrained,
wraps it with a peft LoRA adapter whose B matrices are non-zero, saves the adapter, and records
in float64 on the CPU: logits, loss, the gradient of every LoRA tensor, and the losses and
gradient norms of five AdamW steps. Writes OUT/<case>/{model/, adapter/, golden.safetensors,
golden.json}.

Run where torch, transformers and peft are installed:
    python3 tools/make_fixtures.py --out tests/fixtures/hf
"""
import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch

import peft
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            max_position_embeddings=128, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
            num_attention_heads=4)
CASES = {
    "mha_untied": dict(seed=1, arch=dict(num_key_value_heads=4, tie_word_embeddings=False), theta=10000.0,
                       rope=None, lora=dict(r=4, lora_alpha=8, target_modules=ALL, use_rslora=False)),
    "gqa_tied": dict(seed=2, arch=dict(num_key_value_heads=2, tie_word_embeddings=True), theta=10000.0,
                     rope=None, lora=dict(r=4, lora_alpha=8, target_modules=ALL, use_rslora=False)),
    "llama3_rope": dict(seed=3, arch=dict(num_key_value_heads=1, tie_word_embeddings=False), theta=500000.0,
                        rope=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=16),
                        lora=dict(r=4, lora_alpha=8, target_modules=ALL, use_rslora=False)),
    "head_dim_32": dict(seed=4, arch=dict(num_key_value_heads=2, head_dim=32, tie_word_embeddings=False),
                        theta=10000.0, rope=None,
                        lora=dict(r=4, lora_alpha=8, target_modules=ALL, use_rslora=False)),
    "rslora_subset": dict(seed=5, arch=dict(num_key_value_heads=4, tie_word_embeddings=False), theta=10000.0,
                          rope=None, lora=dict(r=8, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                               use_rslora=True)),
}
LR, BETAS, EPS, WD, MAX_NORM, STEPS = 1e-2, (0.9, 0.999), 1e-8, 0.01, 1.0, 5


def expected_inv_freq(head_dim, theta, rope):
    """inv_freq as REFERENCE.md section 4 describes it, in float32."""
    inv = (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))))
    inv = inv.astype(np.float32)
    if rope and rope["rope_type"] == "llama3":
        f, lo, hi, old = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"], \
            rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        lo_w, hi_w = old / lo, old / hi
        out = np.where(wavelen > lo_w, inv / f, inv)
        s = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - s) * out / f + s * out
        medium = ~(wavelen < hi_w) & ~(wavelen > lo_w)
        inv = np.where(medium, smoothed, out).astype(np.float32)
    return inv


def make_config(case):
    """A LlamaConfig whose rotary embedding really is the one asked for (old and new config styles)."""
    kw = dict(BASE, **case["arch"])
    head_dim = kw.get("head_dim", kw["hidden_size"] // kw["num_attention_heads"])
    want = expected_inv_freq(head_dim, case["theta"], case["rope"])
    attempts = []
    rp = dict(rope_type="default", rope_theta=case["theta"])
    if case["rope"]:
        rp.update(case["rope"])
    attempts.append(dict(kw, rope_parameters=rp))
    attempts.append(dict(kw, rope_theta=case["theta"], rope_scaling=case["rope"]))
    errors = []
    for a in attempts:
        try:
            cfg = LlamaConfig(**a)
            cfg._attn_implementation = "eager"
            torch.manual_seed(0)
            m = LlamaForCausalLM(cfg)
            got = m.model.rotary_emb.inv_freq.detach().float().numpy()
            if got.shape == want.shape and np.allclose(got, want, rtol=1e-6, atol=0):
                return cfg
            errors.append(f"inv_freq mismatch with {sorted(a)}: got {got[:4]} want {want[:4]}")
        except Exception as e:  # noqa: BLE001 - report every failed style
            errors.append(f"{type(e).__name__}: {e}")
    sys.exit("cannot build the config:\n  " + "\n  ".join(errors))


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def save_model(model, path):
    try:
        model.save_pretrained(path, safe_serialization=True)
    except TypeError:
        model.save_pretrained(path)
    assert os.path.exists(os.path.join(path, "model.safetensors")), os.listdir(path)


def saved_key(param_name):
    """peft parameter name -> the key save_pretrained writes (adapter name removed)."""
    return param_name.replace(".default.weight", ".weight")


def load_base(model_dir):
    try:
        return LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        return LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")


def load_trainable(model_dir, adapter_dir):
    base = load_base(model_dir)
    model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True).double()
    return model


def ce_loss(logits, labels):
    """transformers' causal-LM loss (shift, ignore -100, mean) in float64."""
    v = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1, :].reshape(-1, v), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="mean")


def build_case(name, case, out):
    root = os.path.join(out, name)
    if os.path.exists(root):
        shutil.rmtree(root)
    model_dir, adapter_dir = os.path.join(root, "model"), os.path.join(root, "adapter")
    os.makedirs(root)
    cfg = make_config(case)
    torch.manual_seed(case["seed"])
    model = LlamaForCausalLM(cfg).float()
    randomize(model, case["seed"])
    save_model(model, model_dir)

    lcfg = LoraConfig(lora_dropout=0.0, task_type="CAUSAL_LM", **case["lora"])
    pm = get_peft_model(model, lcfg)
    g = torch.Generator().manual_seed(100 + case["seed"])
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(adapter_dir)
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))

    g = torch.Generator().manual_seed(200 + case["seed"])
    ids = torch.randint(3, BASE["vocab_size"], (2, 24), generator=g, dtype=torch.int64)
    labels = ids.clone()
    labels[0, :5] = -100
    labels[1, 20:] = -100

    # Golden forward/backward from the saved files, in float64.
    model = load_trainable(model_dir, adapter_dir)
    lora_params = {saved_key(n): p for n, p in model.named_parameters() if p.requires_grad}
    assert set(lora_params) == set(saved), (sorted(set(lora_params) ^ set(saved)))[:5]
    out_hf = model(input_ids=ids, labels=labels)
    logits = out_hf.logits
    loss = ce_loss(logits, labels)
    assert abs(loss.item() - out_hf.loss.item()) < 1e-5 * abs(loss.item()), (loss.item(), out_hf.loss.item())
    loss.backward()
    tensors = {"input_ids": ids, "labels": labels, "logits": logits.detach().double().contiguous(),
               "loss": loss.detach().double().reshape(1)}
    for k, p in lora_params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, k
        tensors["grad." + k] = p.grad.detach().double().contiguous()

    # Five AdamW steps from the same start.
    model = load_trainable(model_dir, adapter_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = ce_loss(model(input_ids=ids).logits, labels)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, MAX_NORM)))
        losses.append(loss.item())
        opt.step()
    tensors["train_losses"] = torch.tensor(losses, dtype=torch.float64)
    tensors["train_grad_norms"] = torch.tensor(norms, dtype=torch.float64)
    save_file(tensors, os.path.join(root, "golden.safetensors"), metadata={"format": "pt"})
    meta = {"case": name, "transformers_version": transformers.__version__, "peft_version": peft.__version__,
            "torch_version": torch.__version__, "lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WD,
            "max_grad_norm": MAX_NORM, "steps": STEPS,
            "lora": dict(case["lora"], dropout=0.0)}
    with open(os.path.join(root, "golden.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
    print(json.dumps({"case": name, "bytes": size, "loss": tensors["loss"].item(), "losses": losses,
                      "lora_tensors": len(lora_params)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    for name in args.cases.split(","):
        build_case(name, CASES[name], args.out)


if __name__ == "__main__":
    main()
