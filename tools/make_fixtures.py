#!/usr/bin/env python3
"""Golden numbers for ftune's CPU reference, computed with transformers + peft.

For each case: builds a tiny random Llama (LlamaForCausalLM, eager attention, float32) and saves
it with save_pretrained; wraps it in a peft LoRA adapter whose A and B matrices are random (B is
non-zero, so the gradients of A are too) and saves the adapter; then, from the saved files and in
float64 on the CPU, records the logits, the loss, the gradient of every LoRA tensor, and the losses
and pre-clip gradient norms of five AdamW steps. Then, for full-parameter fine-tuning of the base
model alone (no adapter), also in float64: the gradient of every parameter and five AdamW steps on
all of them, with HF Trainer's weight-decay grouping.

Writes OUT/<case>/model/ (config.json, model.safetensors), OUT/<case>/adapter/
(adapter_config.json, adapter_model.safetensors), OUT/<case>/golden.safetensors,
OUT/<case>/golden_full.safetensors and OUT/<case>/golden.json. Prints one JSON line per case and
one with the total size.

    python3 tools/make_fixtures.py --out tests/fixtures/hf
"""
import argparse
import json
import math
import os
import re
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
# The whole of OUT/<case>/ for every case: 11.6 MB with transformers 5.17, of which the five
# golden_full.safetensors take 8.0 MB (1.3 to 1.9 MB each: the float64 gradient of every parameter
# and the final weights of a subset) and the rest 3.6 MB.
MAX_TOTAL_BYTES = 16 * 1024 * 1024
# golden.safetensors holds these plus one "grad.<adapter key>" per LoRA tensor, and nothing else:
# tests/test_hf_golden.cpp counts its tensors, so the full fine-tuning goldens live in a file of
# their own (golden_full.safetensors).
NON_GRAD_KEYS = ["input_ids", "labels", "logits", "loss", "train_losses", "train_grad_norms"]

# Full-parameter fine-tuning of the base model (no adapter): five steps of torch.optim.AdamW
# (float64, foreach=False, fused=False, constant lr) on every parameter, as HF Trainer takes them
# (optim="adamw_torch", lr_scheduler_type="constant", max_grad_norm=FULL_MAX_GRAD_NORM): the loss,
# backward, clip_grad_norm_ over model.parameters(), optimizer step. At INIT_STD 0.08 the pre-clip
# norm of the full gradient is 2.8 to 4.6 in every step of every case, so FULL_MAX_GRAD_NORM 1.0
# clips all of them (full_finetune stops if none clips); the pre-clip norms are recorded.
FULL_LR, FULL_BETAS, FULL_EPS, FULL_WEIGHT_DECAY, FULL_MAX_GRAD_NORM, FULL_STEPS = \
    1e-3, (0.9, 0.999), 1e-8, 0.1, 1.0, 5
# Weight decay as transformers' Trainer.get_decay_parameter_names decides it (read in 5.17): a
# parameter gets none when it sits in a torch.nn.LayerNorm module or when its lower-cased name
# matches one of these patterns; every other one gets args.weight_decay. LlamaRMSNorm is not a
# torch.nn.LayerNorm, but its weights are caught by name: input_layernorm / post_attention_layernorm
# by "layernorm", the final model.norm by "(?:^|\.)norm(?:$|\.)". So for Llama: decay on every 2-D
# weight (embed_tokens, the seven projections of every layer, lm_head), none on the three kinds of
# norm weight (there are no biases). The older rule (only nn.LayerNorm modules and "bias" in the
# name) would have decayed the RMSNorm weights too. full_finetune asks the installed Trainer when it
# can, and stops if its answer differs from this replica or from that Llama split.
TRAINER_NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
# full_adamw.final.<key> is written for these tensors only (embed_tokens, every tensor of layer 0,
# the final norm, lm_head when untied): all the final weights would add another ~1 MB of float64
# a case, more than five times golden.safetensors, and layer 1 exercises no other code path.
# full_grad.<key> is written for every parameter.
FULL_FINAL_LAYER_PREFIX = "model.layers.0."
FULL_FINAL_KEYS = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]


# ----------------------------------------------------------------------------------------------
# Pure-python helpers (no torch).

def head_dim_of(arch_kwargs):
    hd = arch_kwargs.get("head_dim")
    return hd if hd else arch_kwargs["hidden_size"] // arch_kwargs["num_attention_heads"]


def expected_inv_freq(head_dim, theta, scaling):
    """RoPE inverse frequencies as transformers computes them (transformers' modeling_rope_utils.py: default and llama3 rope types), in float64."""
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


def full_final_key(key):
    """Whether full_adamw.final.<key> is written (see FULL_FINAL_KEYS)."""
    return key in FULL_FINAL_KEYS or key.startswith(FULL_FINAL_LAYER_PREFIX)


def metadata_strings(meta):
    """safetensors __metadata__ holds strings only: every value JSON-encoded (floats in Python's
    shortest round-trip form, lists as JSON arrays), strings as they are."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


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


def load_base_f64(model_dir, tied):
    """The base model alone from the saved files, every parameter trainable, float64, eval mode (no
    dropout: attention_dropout is 0). Tied embeddings stay one Parameter (Module.double() converts
    in place), so its gradient holds both the embedding and the lm_head contributions."""
    model = load_base(model_dir).double().eval()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == bool(tied), \
        "lm_head tied=%s after loading, wanted %s" % (not tied, tied)
    for n, p in model.named_parameters():
        assert p.dtype == torch.float64 and p.requires_grad, (n, p.dtype, p.requires_grad)
    return model


def replica_decay_names(model):
    """transformers' Trainer.get_decay_parameter_names, rewritten (trainer_pt_utils.get_parameter_names
    with forbidden_layer_types [nn.LayerNorm] and TRAINER_NO_DECAY_PATTERNS): the names of the
    parameters that get weight decay. For tied embeddings it lists lm_head.weight too, as the
    original does; only the names model.named_parameters() gives are looked up in it."""
    patterns = [re.compile(p) for p in TRAINER_NO_DECAY_PATTERNS]

    def names(module):
        out = []
        for child_name, child in module.named_children():
            out += ["%s.%s" % (child_name, n) for n in names(child)
                    if not isinstance(child, torch.nn.LayerNorm)
                    and not any(p.search(("%s.%s" % (child_name, n)).lower()) for p in patterns)]
        out += [k for k in module._parameters if not any(p.search(k.lower()) for p in patterns)]
        return out

    return set(names(model))


def installed_decay_names(model):
    """The installed transformers' own Trainer.get_decay_parameter_names (it reads only `model`, so it
    is called without building a Trainer), or None and the reason it could not be called."""
    try:
        from transformers import Trainer
        return set(Trainer.get_decay_parameter_names(None, model)), None
    except Exception as e:  # noqa: BLE001 - the replica is used instead, and the reason recorded
        return None, "%s: %s" % (type(e).__name__, e)


def full_finetune(model_dir, ids, labels, tied):
    """Full-parameter fine-tuning goldens of the base model alone: the tensors of
    golden_full.safetensors (full_grad.<key>, full_adamw.losses, full_adamw.grad_norms,
    full_adamw.final.<key>) and their settings. No random draw is made here."""
    model = load_base_f64(model_dir, tied)
    named = dict(model.named_parameters())  # tied: one entry, model.embed_tokens.weight
    saved = load_file(os.path.join(model_dir, "model.safetensors"))
    assert set(named) == set(saved), sorted(set(named) ^ set(saved))[:6]
    for k, p in named.items():
        assert torch.equal(p.detach(), saved[k].double()), "base weight %s did not load as saved" % k

    replica = replica_decay_names(model) & set(named)
    installed, why_not = installed_decay_names(model)
    if installed is not None:
        installed &= set(named)
        if installed != replica:
            sys.exit("Trainer.get_decay_parameter_names differs from TRAINER_NO_DECAY_PATTERNS: only it decays "
                     "%s, only the replica %s" % (sorted(installed - replica), sorted(replica - installed)))
        rule = "transformers %s Trainer.get_decay_parameter_names" % transformers.__version__
    else:
        rule = "replica of Trainer.get_decay_parameter_names (the installed one could not be called: %s)" % why_not
    decay = replica
    two_d = {n for n, p in named.items() if p.dim() == 2}
    if decay != two_d or any(named[n].dim() != 1 or not n.endswith("norm.weight") for n in set(named) - decay):
        sys.exit("weight decay grouping is not 'every 2-D weight, no norm weight': decay %s" % sorted(decay))
    no_decay = set(named) - decay

    groups = [{"params": [p for n, p in named.items() if n in decay], "weight_decay": FULL_WEIGHT_DECAY},
              {"params": [p for n, p in named.items() if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=FULL_LR, betas=FULL_BETAS, eps=FULL_EPS, foreach=False, fused=False)
    params = list(model.parameters())
    assert len(params) == len(named), (len(params), len(named))
    tensors, losses, norms = {}, [], []
    for step in range(FULL_STEPS):
        opt.zero_grad(set_to_none=True)
        out_hf = model(input_ids=ids, labels=labels)
        loss = causal_lm_loss(out_hf.logits, labels)
        if step == 0:
            hf_loss = float(out_hf.loss.detach())
            assert abs(loss.item() - hf_loss) <= 1e-5 * abs(loss.item()), (loss.item(), hf_loss)
        loss.backward()
        if step == 0:
            for k, p in sorted(named.items()):
                assert p.grad is not None and float(p.grad.abs().sum()) > 0, "zero gradient for " + k
                tensors["full_grad." + k] = p.grad.detach().clone().contiguous()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, FULL_MAX_GRAD_NORM)))
        losses.append(float(loss.detach()))
        opt.step()
    assert all(math.isfinite(v) for v in losses + norms), (losses, norms)
    recomputed = math.sqrt(sum(float((tensors["full_grad." + k] ** 2).sum()) for k in named))
    assert abs(recomputed - norms[0]) <= 1e-10 * norms[0], (recomputed, norms[0])
    if not any(n > FULL_MAX_GRAD_NORM for n in norms):
        sys.exit("no full fine-tuning step clips (pre-clip norms %s, max %s): lower FULL_MAX_GRAD_NORM"
                 % (norms, FULL_MAX_GRAD_NORM))
    final_keys = sorted(k for k in named if full_final_key(k))
    for k in final_keys:
        p = named[k].detach()
        assert not torch.equal(p, saved[k].double()), "%s did not move in %d steps" % (k, FULL_STEPS)
        tensors["full_adamw.final." + k] = p.clone().contiguous()
    tensors["full_adamw.losses"] = torch.tensor(losses, dtype=torch.float64)
    tensors["full_adamw.grad_norms"] = torch.tensor(norms, dtype=torch.float64)
    assert len(tensors) == len(named) + len(final_keys) + 2, sorted(tensors)
    assert all(t.dtype == torch.float64 for t in tensors.values())
    meta = {"lr": FULL_LR, "betas": list(FULL_BETAS), "eps": FULL_EPS, "weight_decay": FULL_WEIGHT_DECAY,
            "max_grad_norm": FULL_MAX_GRAD_NORM, "steps": FULL_STEPS, "lr_schedule": "constant",
            "optimizer": "torch.optim.AdamW(foreach=False, fused=False), float64",
            "decay": sorted(decay), "no_decay": sorted(no_decay), "decay_rule": rule,
            "final_keys": final_keys, "tied_embeddings": bool(tied)}
    return tensors, meta, losses, norms


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
    del model, params, opt

    # Full-parameter fine-tuning of the base model alone, from the saved files, in float64. It
    # comes after everything above and draws no random numbers, so it changes none of it.
    full_tensors, full_meta, full_losses, full_norms = full_finetune(model_dir, ids, labels,
                                                                     arch["tie_word_embeddings"])
    save_file(full_tensors, os.path.join(root, "golden_full.safetensors"),
              metadata=dict(metadata_strings(full_meta), format="pt"))

    meta = {"case": name, "transformers_version": transformers.__version__, "peft_version": peft.__version__,
            "torch_version": torch.__version__, "lr": LR, "betas": list(BETAS), "eps": EPS,
            "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM, "steps": STEPS,
            "lora": lora_meta(lora), "seed": seed, "init_std": std, "rope_config_style": rope_style,
            "full_ft": full_meta}
    with open(os.path.join(root, "golden.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")

    summary = {"case": name, "bytes": tree_bytes(root), "model_bytes": tree_bytes(model_dir),
               "adapter_bytes": tree_bytes(adapter_dir),
               "golden_bytes": os.path.getsize(os.path.join(root, "golden.safetensors")),
               "golden_full_bytes": os.path.getsize(os.path.join(root, "golden_full.safetensors")),
               "lora_tensors": len(saved), "loss": float(tensors["loss"][0]), "train_losses": losses,
               "train_grad_norms": norms, "full_losses": full_losses, "full_grad_norms": full_norms,
               "full_decay_rule": full_meta["decay_rule"], "rope_config_style": rope_style}
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
