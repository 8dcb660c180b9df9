#!/usr/bin/env python3
"""Golden numbers for ftune's CPU reference, computed with transformers + peft.

For each case: builds a tiny random Llama (LlamaForCausalLM, eager attention, float32) and saves
it with save_pretrained; wraps it in a peft LoRA adapter whose A and B matrices are random (B is
non-zero, so the gradients of A are too) and saves the adapter; then, from the saved files and in
float64 on the CPU, records the logits, the loss, the gradient of every LoRA tensor, and the losses
and pre-clip gradient norms of five AdamW steps.

Writes OUT/<case>/model/ (config.json, model.safetensors), OUT/<case>/adapter/
(adapter_config.json, adapter_model.safetensors), OUT/<case>/golden.safetensors and
OUT/<case>/golden.json. Prints one JSON line per case and one with the total size.

    python3 tools/make_fixtures.py --out tests/fixtures/hf
"""
import argparse
import json
import math
import os
import shutil
import sys

import torch

import peft
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VOCAB = 256
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=128, rms_norm_eps=1e-5,
            bos_token_id=1, eos_token_id=2)
DEFAULT_LORA = dict(r=4, lora_alpha=8, target_modules=ALL_LINEAR, use_rslora=False)
LLAMA3_SCALING = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=16)

# seed: torch.manual_seed and the generators of the weights (seed), the LoRA tensors (100 + seed)
# and the inputs (200 + seed). theta: rope_theta. scaling: rope scaling, None for plain RoPE.
CASES = {
    "mha_untied": dict(seed=1, arch=dict(num_key_value_heads=4, tie_word_embeddings=False),
                       theta=10000.0, scaling=None, lora=DEFAULT_LORA),
    "gqa_tied": dict(seed=2, arch=dict(num_key_value_heads=2, tie_word_embeddings=True),
                     theta=10000.0, scaling=None, lora=DEFAULT_LORA),
    "llama3_rope": dict(seed=3, arch=dict(num_key_value_heads=1, tie_word_embeddings=False),
                        theta=500000.0, scaling=LLAMA3_SCALING, lora=DEFAULT_LORA),
    "head_dim_32": dict(seed=4, arch=dict(num_key_value_heads=2, head_dim=32, tie_word_embeddings=False),
                        theta=10000.0, scaling=None, lora=DEFAULT_LORA),
    "rslora_subset": dict(seed=5, arch=dict(num_key_value_heads=4, tie_word_embeddings=False),
                          theta=10000.0, scaling=None,
                          lora=dict(r=8, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                    use_rslora=True)),
}

LR, BETAS, EPS, WEIGHT_DECAY, MAX_GRAD_NORM, STEPS = 1e-2, (0.9, 0.999), 1e-8, 0.01, 1.0, 5
BATCH, SEQ = 2, 24
# Std of the random base weights. 0.08 (rather than the usual 0.02 initializer range) gives logits
# far from uniform and pre-clip gradient norms above 1 in most steps, so the loss and the clipping
# are really exercised; the committed fixtures were made with it.
INIT_STD = 0.08
MAX_TOTAL_BYTES = 4 * 1024 * 1024
# golden.safetensors holds these plus one "grad.<adapter key>" per LoRA tensor.
NON_GRAD_KEYS = ["input_ids", "labels", "logits", "loss", "train_losses", "train_grad_norms"]


# ----------------------------------------------------------------------------------------------
# Pure-python helpers (no torch).

def head_dim_of(arch_kwargs):
    hd = arch_kwargs.get("head_dim")
    return hd if hd else arch_kwargs["hidden_size"] // arch_kwargs["num_attention_heads"]


def expected_inv_freq(head_dim, theta, scaling):
    """RoPE inverse frequencies as transformers computes them (REFERENCE.md section 4), in float64."""
    inv = [1.0 / (theta ** (2.0 * i / head_dim)) for i in range(head_dim // 2)]
    if not scaling:
        return inv
    if scaling["rope_type"] != "llama3":
        raise ValueError("unsupported rope_type " + str(scaling["rope_type"]))
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    out = []
    for f in inv:
        wavelen = 2.0 * math.pi / f
        if wavelen > low_wavelen:
            out.append(f / factor)
        elif wavelen < high_wavelen:
            out.append(f)
        else:
            s = (old_len / wavelen - low) / (high - low)
            out.append((1.0 - s) * f / factor + s * f)
    return out


def close_lists(got, want, rtol):
    return len(got) == len(want) and all(abs(g - w) <= rtol * abs(w) for g, w in zip(got, want))


def config_attempts(arch_kwargs, theta, scaling):
    """LlamaConfig keyword sets to try, in order: the rope_parameters form of transformers 5, then
    the older rope_theta/rope_scaling form. The first one that really gives the wanted inv_freq is
    used (an older version keeps an unknown rope_parameters as a plain attribute and ignores it)."""
    legacy = dict(arch_kwargs, rope_theta=theta)
    if scaling:
        legacy["rope_scaling"] = dict(scaling)
    params = dict(rope_type="default", rope_theta=theta)
    if scaling:
        params.update(scaling)
    modern = dict(arch_kwargs, rope_parameters=params)
    return [("rope_parameters", modern), ("rope_scaling", legacy)]


def saved_key(param_name, adapter_name="default"):
    """peft parameter name -> key in adapter_model.safetensors: the adapter name that follows
    lora_A / lora_B is dropped ('...q_proj.lora_A.default.weight' -> '...q_proj.lora_A.weight')."""
    parts = param_name.split(".")
    out = []
    for i, p in enumerate(parts):
        if p == adapter_name and i > 0 and parts[i - 1].startswith("lora_"):
            continue
        out.append(p)
    return ".".join(out)


def lora_meta(lora):
    return {"r": lora["r"], "alpha": lora["lora_alpha"], "dropout": 0.0,
            "target_modules": list(lora["target_modules"]), "use_rslora": bool(lora["use_rslora"])}


def tree_bytes(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(d, f))
    return total


# ----------------------------------------------------------------------------------------------
# torch / transformers / peft.

def find_inv_freq(model):
    buffers = dict(model.named_buffers())
    for name in ("model.rotary_emb.inv_freq", "base_model.model.model.rotary_emb.inv_freq"):
        if name in buffers:
            return buffers[name]
    for name, b in buffers.items():
        if name.split(".")[-1] == "inv_freq":
            return b
    raise RuntimeError("no inv_freq buffer in the model")


def make_config(name, case):
    """A LlamaConfig (eager attention) whose rotary embedding really is the one asked for."""
    arch = dict(BASE, **case["arch"])
    want = expected_inv_freq(head_dim_of(arch), case["theta"], case["scaling"])
    errors = []
    for style, kwargs in config_attempts(arch, case["theta"], case["scaling"]):
        try:
            cfg = LlamaConfig(**kwargs)
            cfg._attn_implementation = "eager"
            probe = LlamaForCausalLM(cfg)
            got = [float(v) for v in find_inv_freq(probe).detach().double().cpu()]
        except Exception as e:  # noqa: BLE001 - every failed style is reported below
            errors.append("%s: %s: %s" % (style, type(e).__name__, e))
            continue
        if close_lists(got, want, 1e-5):
            if case["scaling"]:
                plain = expected_inv_freq(head_dim_of(arch), case["theta"], None)
                assert not close_lists(got, plain, 1e-3), "%s: rope scaling is not active" % name
            return cfg, style
        errors.append("%s: inv_freq %s, want %s" % (style, got[:4], want[:4]))
    sys.exit("%s: cannot build the config:\n  %s" % (name, "\n  ".join(errors)))


def randomize(model, seed, std):
    """Normal(0, std) weights; norm weights 1 + 0.1*randn, so that they are not trivially 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def check_structure(model, arch):
    hd, heads, kv, hidden = head_dim_of(arch), arch["num_attention_heads"], arch["num_key_value_heads"], \
        arch["hidden_size"]
    attn = model.model.layers[0].self_attn
    assert tuple(attn.q_proj.weight.shape) == (heads * hd, hidden), attn.q_proj.weight.shape
    assert tuple(attn.k_proj.weight.shape) == (kv * hd, hidden), attn.k_proj.weight.shape
    assert tuple(attn.v_proj.weight.shape) == (kv * hd, hidden), attn.v_proj.weight.shape
    assert tuple(attn.o_proj.weight.shape) == (hidden, heads * hd), attn.o_proj.weight.shape
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied == bool(arch["tie_word_embeddings"]), "lm_head tied=%s, wanted %s" % (
        tied, arch["tie_word_embeddings"])
    impl = getattr(model.config, "_attn_implementation", None)
    assert impl in (None, "eager"), impl


def save_model(model, path):
    try:
        model.save_pretrained(path, safe_serialization=True)
    except TypeError:  # a version without the argument writes safetensors anyway
        model.save_pretrained(path)
    files = sorted(os.listdir(path))
    assert "model.safetensors" in files and not any(f.endswith(".index.json") for f in files), files


def load_base(model_dir):
    try:
        return LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    except TypeError:  # versions before the `dtype` argument
        return LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                attn_implementation="eager")


def load_peft_f64(model_dir, adapter_dir):
    """Base model + adapter from the saved files, trainable LoRA, float64, eval mode (no dropout
    anywhere: attention_dropout and lora_dropout are 0)."""
    model = PeftModel.from_pretrained(load_base(model_dir), adapter_dir, is_trainable=True)
    model = model.double().eval()
    for n, p in model.named_parameters():
        assert p.dtype == torch.float64, (n, p.dtype)
        assert p.requires_grad == ("lora_" in n), (n, p.requires_grad)
    return model


def causal_lm_loss(logits, labels):
    """transformers' causal-LM loss (labels shifted left, -100 ignored, mean over targets), kept in
    float64: transformers' own loss function casts the logits to float32 first."""
    v = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1, :].reshape(-1, v), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="mean")


def make_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int64)
    labels = ids.clone()
    labels[0, :5] = -100
    labels[1, 20:] = -100
    return ids, labels


def build_case(name, case, out, std):
    root = os.path.join(out, name)
    if os.path.isdir(root):
        shutil.rmtree(root)
    model_dir, adapter_dir = os.path.join(root, "model"), os.path.join(root, "adapter")
    os.makedirs(root)
    arch = dict(BASE, **case["arch"])
    seed = case["seed"]

    # Base model.
    cfg, rope_style = make_config(name, case)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float()
    if arch["tie_word_embeddings"]:
        model.tie_weights()
    randomize(model, seed, std)
    check_structure(model, arch)
    save_model(model, model_dir)
    reference_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # Adapter with random, non-zero A and B.
    lora = case["lora"]
    lcfg = LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=0.0,
                      target_modules=list(lora["target_modules"]), use_rslora=lora["use_rslora"],
                      task_type="CAUSAL_LM")
    pm = get_peft_model(model, lcfg)
    g = torch.Generator().manual_seed(100 + seed)
    n_a = n_b = 0
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
                n_a += 1
            elif "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
                n_b += 1
    n_modules = arch["num_hidden_layers"] * len(lora["target_modules"])
    assert n_a == n_b == n_modules, (n_a, n_b, n_modules)
    pm.save_pretrained(adapter_dir)
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))

    ids, labels = make_inputs(200 + seed)

    # Golden forward and backward, from the saved files, in float64.
    reloaded = load_base(model_dir).state_dict()
    assert set(reloaded) == set(reference_state), sorted(set(reloaded) ^ set(reference_state))[:6]
    for k, v in reference_state.items():
        assert torch.equal(reloaded[k].float(), v.float()), "base weight %s did not round-trip" % k
    del reloaded
    model = load_peft_f64(model_dir, adapter_dir)
    lora_params = {saved_key(n): p for n, p in model.named_parameters() if p.requires_grad}
    assert set(lora_params) == set(saved), sorted(set(lora_params) ^ set(saved))[:6]
    for k, p in lora_params.items():
        assert torch.equal(p.detach(), saved[k].double()), "adapter tensor %s did not round-trip" % k
    out_hf = model(input_ids=ids, labels=labels)
    logits = out_hf.logits
    assert logits.dtype == torch.float64 and tuple(logits.shape) == (BATCH, SEQ, VOCAB), \
        (logits.dtype, logits.shape)
    loss = causal_lm_loss(logits, labels)
    hf_loss = float(out_hf.loss.detach())
    assert abs(loss.item() - hf_loss) <= 1e-5 * abs(loss.item()), (loss.item(), hf_loss)
    loss.backward()
    tensors = {"input_ids": ids.contiguous(), "labels": labels.contiguous(),
               "logits": logits.detach().double().contiguous(), "loss": loss.detach().double().reshape(1)}
    for k, p in sorted(lora_params.items()):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, "zero gradient for " + k
        tensors["grad." + k] = p.grad.detach().double().contiguous()
    del model, lora_params

    # Five AdamW steps from the same starting adapter.
    model = load_peft_f64(model_dir, adapter_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == len(saved), (len(params), len(saved))
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        step_loss = causal_lm_loss(model(input_ids=ids).logits, labels)
        step_loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)))
        losses.append(float(step_loss.detach()))
        opt.step()
    assert all(math.isfinite(v) for v in losses + norms), (losses, norms)
    assert abs(losses[0] - float(tensors["loss"][0])) <= 1e-12 * losses[0], (losses[0], tensors["loss"])
    tensors["train_losses"] = torch.tensor(losses, dtype=torch.float64)
    tensors["train_grad_norms"] = torch.tensor(norms, dtype=torch.float64)

    assert len(tensors) == len(NON_GRAD_KEYS) + len(saved), sorted(tensors)
    save_file(tensors, os.path.join(root, "golden.safetensors"), metadata={"format": "pt"})
    meta = {"case": name, "transformers_version": transformers.__version__, "peft_version": peft.__version__,
            "torch_version": torch.__version__, "lr": LR, "betas": list(BETAS), "eps": EPS,
            "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM, "steps": STEPS,
            "lora": lora_meta(lora), "seed": seed, "init_std": std, "rope_config_style": rope_style}
    with open(os.path.join(root, "golden.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")

    summary = {"case": name, "bytes": tree_bytes(root), "model_bytes": tree_bytes(model_dir),
               "adapter_bytes": tree_bytes(adapter_dir),
               "golden_bytes": os.path.getsize(os.path.join(root, "golden.safetensors")),
               "lora_tensors": len(saved), "loss": float(tensors["loss"][0]), "train_losses": losses,
               "train_grad_norms": norms, "rope_config_style": rope_style}
    print(json.dumps(summary), flush=True)
    return summary["bytes"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder; OUT/<case>/ is replaced")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    ap.add_argument("--init-std", type=float, default=INIT_STD, help="std of the random base weights")
    args = ap.parse_args()
    names = [c for c in args.cases.split(",") if c]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        sys.exit("unknown case(s) %s; known: %s" % (unknown, ", ".join(CASES)))
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for name in names:
        total += build_case(name, CASES[name], args.out, args.init_std)
    print(json.dumps({"total_bytes": total, "cases": len(names), "limit_bytes": MAX_TOTAL_BYTES}), flush=True)
    if total > MAX_TOTAL_BYTES:
        sys.exit("the fixtures take %d bytes, more than %d" % (total, MAX_TOTAL_BYTES))


if __name__ == "__main__":
    main()
