"""Tiny transformers models with each lrmath torch layer, shared by the compile and distributed tests
(and :func:`kl_by_hand`, the oracle of the distillation tests).

Every builder returns a model whose only trainable parameters are the lrmath layer's (plus
none of the base model's), built deterministically from a seed, so two calls give equal
models (the distributed tests rebuild the same model in each process).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

VOCAB = 64
LAYERS = ("lora", "peft", "sparsegrad", "sparsegrad_transform", "randomized", "kashin", "lotr")


def llama(dtype=torch.float64, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(dtype)


def bert(dtype=torch.float64, seed=0):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=4, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    return BertModel(cfg, add_pooling_layer=False).to(dtype)


def _freeze(model):
    for p in model.parameters():
        p.requires_grad_(False)


def _indices(n, m, nnz, seed):
    return np.sort(np.random.default_rng(seed).choice(n * m, nnz, replace=False))


def build(kind: str, dtype=torch.float64, seed=0):
    """A tiny model (Llama; BERT for the SparseGrad transform route) with ``kind`` layers inside.

    Trainable parameters are moved off zero where they start at zero (LoRA B, SparseGrad delta,
    LoTR cores), so gradients of every factor are non-trivial.
    """
    from lrmath import torch as lt

    g = torch.Generator().manual_seed(seed + 1)
    model = bert(dtype, seed) if kind == "sparsegrad_transform" else llama(dtype, seed)
    _freeze(model)
    if kind == "lora":
        attn = model.model.layers[0].self_attn
        for name in ("q_proj", "v_proj"):
            setattr(attn, name, lt.LoRALinear.from_linear(getattr(attn, name), r=4, lora_alpha=8))
    elif kind == "peft":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lt.convert_peft(model)
    elif kind in ("sparsegrad", "sparsegrad_transform"):
        if kind == "sparsegrad":
            mlp = model.model.layers[0].mlp
            targets = [(mlp, "up_proj", "random", "random", "columns"), (mlp, "down_proj", "random", "random", "columns")]
        else:
            layer = model.encoder.layer[0]
            targets = [(layer.intermediate, "dense", "hadamard", "dct", "transform")]
        for j, (parent, name, bu, bv, route) in enumerate(targets):
            lin = getattr(parent, name)
            n, m = lin.weight.shape
            setattr(parent, name, lt.SparseGradLinear.from_linear(lin, bu, bv, _indices(n, m, 48, seed + j), route=route))
    elif kind == "randomized":
        lt.randomize(model.model.layers[0].mlp, ratio=0.5, estimator="crs", seed=seed)
        lt.randomize(model.model.layers[0].self_attn, ratio=0.5, estimator="gaussian", seed=seed + 10,
                     include=["q_proj"])
        for mod in model.modules():
            if isinstance(mod, lt.RandomizedLinear):
                mod.weight.requires_grad_(True)
    elif kind == "kashin":
        lt.quantize_model(model.model.layers[0], bits=2, block=32, iters=2, include=["*mlp*", "*q_proj"])
        for mod in model.modules():
            if isinstance(mod, lt.KashinLinear) and mod.bias is not None:
                mod.bias.requires_grad_(True)
        model.model.norm.weight.requires_grad_(True)  # a parameter before the head: dx must flow
        model.model.layers[0].input_layernorm.weight.requires_grad_(True)
    elif kind == "lotr":
        lt.apply_lotr(model, ["q_proj", "v_proj", "k_proj"], 4, planned=True, seed=seed)
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and (p.abs().max() == 0 if p.numel() else False):
                p.copy_(0.05 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return model


def batch(n=2, s=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, s), generator=g)


def loss_fn(model, ids):
    """Mean next-token loss (Llama) or a fixed random projection of the last hidden state (BERT)."""
    out = model(input_ids=ids)
    if hasattr(out, "logits"):
        logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
        return torch.nn.functional.cross_entropy(logits, ids[:, 1:].reshape(-1))
    h = out.last_hidden_state
    w = torch.linspace(-1, 1, h.shape[-1], dtype=h.dtype)
    return (h @ w).square().mean()


def reset_streams(model, value=0):
    """Put every RandomizedLinear's stream counter at ``value`` (same sketches in two runs)."""
    from lrmath.torch import RandomizedLinear

    for mod in model.modules():
        if isinstance(mod, RandomizedLinear):
            mod.calls = value


def trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def kl_by_hand(model, ref, batches) -> float:
    """Mean token-level KL(ref || model) over batches of ids (b, s), in float64 from the logits."""
    tot = 0.0
    with torch.no_grad():
        for ids in batches:
            lq = model(input_ids=ids).logits.double()
            lr = ref(input_ids=ids).logits.double()
            p = lr.softmax(-1)
            tot += float((p * (lr.log_softmax(-1) - lq.log_softmax(-1))).sum(-1).mean())
    return tot / len(batches)
