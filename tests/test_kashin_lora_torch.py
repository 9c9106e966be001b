"""KashinLinear with the rows layout and low-rank factors, calibrated quantize_model, and LoRA on a
frozen Kashin base (issue #14). Oracles: dense float64 products with the NumPy-decoded weight."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lrmath.errors import RankError  # noqa: E402
from lrmath.kashin import quantize  # noqa: E402
from lrmath.testing import assert_close  # noqa: E402
from lrmath.torch.kashin import KashinLinear, load_quantized, quantize_model, save_quantized  # noqa: E402
from lrmath.torch.kashin_lora import KashinLoRALinear, convert_peft_kashin, quantized_base_pair  # noqa: E402
from lrmath.torch.runlora import LoRALinear  # noqa: E402


def _layer(out=40, inn=96, rank=3, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(inn, out)
    q = quantize(lin.weight.detach().numpy(), 2, blocks=[64, inn - 64], rank=rank, lowrank_bits=8, iters=2)
    return KashinLinear(q, lin.bias, chunk_rows=7), q


def _alloc_log():
    from torch.utils._python_dispatch import TorchDispatchMode

    sizes = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            r = func(*args, **(kwargs or {}))
            for t in (r if isinstance(r, (tuple, list)) else [r]):
                if isinstance(t, torch.Tensor):
                    sizes.append(t.numel())
            return r

    return Log, sizes


def test_rows_and_lowrank_layer_matches_numpy_decoder():
    layer, q = _layer()
    Wd = torch.from_numpy(q.dequantize(np.float64))  # NumPy reference (checked bit by bit in test_kashin_gptq)
    x = torch.randn(2, 5, 96, requires_grad=True)
    y = layer(x)
    assert_close(y.detach(), (x.detach().double() @ Wd.T + layer.bias.detach().double()).float(), n=96, depth=4)
    g = torch.randn_like(y)
    y.backward(g)
    assert_close(x.grad, (g.double() @ Wd).float(), n=40, depth=4)
    assert abs(layer.bits_per_weight - q.bits_per_weight) < 1e-12


def test_lora_over_kashin_matches_dense_oracle_and_never_builds_w():
    layer, _ = _layer(out=48, inn=128, seed=1)
    lora = LoRALinear.from_kashin(layer, 4, lora_alpha=8.0)
    assert isinstance(lora, KashinLoRALinear)
    with torch.no_grad():
        lora.lora_B.normal_(0, 0.1)
    x = torch.randn(3, 6, 128, requires_grad=True)
    Log, sizes = _alloc_log()
    with Log():
        y = lora(x)
        g = torch.randn_like(y)
        y.backward(g)
    assert max(sizes) < 48 * 128, max(sizes)  # no (out, in)-sized tensor: the base stays in products
    W = layer.dequantize().double()
    A = lora.lora_A.detach().double().requires_grad_()
    B = lora.lora_B.detach().double().requires_grad_()
    xd = x.detach().double().requires_grad_()
    yr = xd @ W.T + layer.bias.double() + lora.scaling * (xd @ A.T) @ B.T
    yr.backward(g.double())
    assert_close(y.detach(), yr.detach().float(), n=128, depth=5)
    assert_close(x.grad, xd.grad.float(), n=48, depth=5)
    assert_close(lora.lora_A.grad, A.grad.float(), n=18, depth=5, atol=1e-6)
    assert_close(lora.lora_B.grad, B.grad.float(), n=18, depth=5, atol=1e-6)
    assert layer.codes_u.grad is None and (layer.bias is None or layer.bias.grad is None)


def test_planned_pairs_keep_base_in_products():
    f, b = quantized_base_pair(576, 576, 8, 512, True, False, False)
    for gph in (f, b):
        for st in gph.steps:
            names = [a for a, _ in st.args]
            if "W" in names:
                assert st.op in ("mm", "addmm") and names[0] != "W" or st.op == "mm"
    # with dropout too
    quantized_base_pair(576, 1536, 8, 64, True, True, True)


def test_lowrank_init_starts_at_the_compensated_base_and_trains():
    layer, _ = _layer(seed=2)
    before = layer.dequantize()
    x = torch.randn(4, 96)
    y0 = layer(x).detach()
    lora = KashinLoRALinear(copy.deepcopy(layer), 3, lora_alpha=6.0, init="lowrank")
    assert lora.base.lowrank is None  # moved into the adapter
    assert_close(lora(x).detach(), y0, n=96, depth=6, atol=1e-5)
    assert_close(lora.base.dequantize() + lora.delta_weight().detach(), before, n=3, depth=4, atol=1e-5)
    opt = torch.optim.SGD([lora.lora_A, lora.lora_B], lr=0.05)
    target = torch.randn(4, 40)
    losses = []
    for _ in range(5):
        loss = ((lora(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    with pytest.raises(RankError):
        KashinLoRALinear(copy.deepcopy(layer), 2, init="lowrank")


def test_padding_rows_left_out_of_h():
    from lrmath.torch.kashin import _hessian_hooks

    lin = torch.nn.Sequential(torch.nn.Linear(4, 3))
    H, state = {}, {"mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}
    hooks = _hessian_hooks(lin, ["0"], H, state)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    lin.double()(x)
    for h in hooks:
        h.remove()
    real = torch.stack([x[0, 0], x[0, 1], x[1, 0]])
    assert_close(H["0"], real.T @ real, rtol=1e-12, atol=1e-12)


def _tiny_llama(seed, batch, seq):
    """A 2-block random transformers Llama (vocabulary 64, width 32) and token ids (batch, seq)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return transformers, cfg, transformers.LlamaForCausalLM(cfg).eval(), torch.randint(0, 64, (batch, seq))


def test_calibrated_quantize_model_tiny_llama(tmp_path):
    transformers, cfg, model, ids = _tiny_llama(0, 16, 12)

    def logits(m, x):
        with torch.no_grad():
            return m(input_ids=x, use_cache=False).logits

    ref = logits(model, ids)
    free = quantize_model(copy.deepcopy(model), 2, iters=2, layout="rows")
    cal = quantize_model(copy.deepcopy(model), 2, iters=2, progress=False,
                         calibration=[{"input_ids": ids[:8], "use_cache": False}, {"input_ids": ids[8:], "use_cache": False}])
    assert len(cal.kashin_layers) == 14 and cal.kashin_uncalibrated == []  # 7 per block; head and embeddings excluded
    # texts: tokenized and cut into windows (a toy tokenizer: characters mod the vocabulary)
    tok = lambda text: {"input_ids": [ord(c) % 64 for c in text]}  # noqa: E731
    by_text = quantize_model(copy.deepcopy(model), 2, iters=1, calibration=["some text " * 8, "more text " * 8],
                             tokenizer=tok, window=24)
    assert len(by_text.kashin_layers) == 14
    with pytest.raises(ValueError, match="tokenizer"):
        quantize_model(copy.deepcopy(model), 2, calibration=["text"])
    assert all(isinstance(cal.get_submodule(n), KashinLinear) for n in cal.kashin_layers)
    e_free = float((logits(free, ids) - ref).norm() / ref.norm())
    e_cal = float((logits(cal, ids) - ref).norm() / ref.norm())  # in-sample: what calibration optimises
    assert e_cal < e_free, (e_cal, e_free)
    p = tmp_path / "m.safetensors"
    save_quantized(cal, p)
    back = load_quantized(transformers.LlamaForCausalLM(cfg).eval(), p)
    assert_close(logits(back, ids), logits(cal, ids), rtol=0, atol=0)
    names = convert_peft_kashin(back, 2, 4.0, include=["*.q_proj", "*.v_proj"])
    assert len(names) == 4 and all(isinstance(back.get_submodule(n), KashinLoRALinear) for n in names)
    trainable = [n for n, p in back.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    out = back(input_ids=ids[:2], labels=ids[:2], use_cache=False)
    out.loss.backward()
    assert all(p.grad is not None for n, p in back.named_parameters() if p.requires_grad)


def test_calibrated_quantize_model_with_a_peer_quantizer():
    """``replace=``: the peer sees each linear's X^T X, block 0 from the float model and block 1 from
    the model whose block 0 is already replaced (block-sequential), checked by independent hooks."""
    from lrmath.kashin import rtn_quantize
    from lrmath.torch.kashin import calibrated_quantize_model

    _, _, model, ids = _tiny_llama(1, 6, 10)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    seen = {}

    def replace(lin, H):
        seen[lin] = H
        r = rtn_quantize(lin.weight.detach().numpy(), 3, 16, calibration=H)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(r.dequantize()))
        return lin

    def gram(m, name):
        box = []
        h = m.get_submodule(name).register_forward_hook(lambda mod, a, o: box.append(a[0].reshape(-1, a[0].shape[-1])))
        with torch.no_grad():
            m(input_ids=ids, use_cache=False)
        h.remove()
        x = torch.cat(box).double()
        return (x.T @ x).numpy()

    q0 = "model.layers.0.self_attn.q_proj"
    d1 = "model.layers.1.mlp.down_proj"
    want0 = gram(model, q0)
    ref = copy.deepcopy(model)
    out = calibrated_quantize_model(model, 3, names, [{"input_ids": ids[:3]}, {"input_ids": ids[3:]}], replace=replace)
    assert len(seen) == len(names) == 14 and out.kashin_uncalibrated == []
    assert_close(seen[out.get_submodule(q0)], want0, rtol=1e-10, atol=1e-10)
    half = copy.deepcopy(ref)  # block 0 as the peer left it, block 1 still float
    for n in names:
        if n.startswith("model.layers.0."):
            half.get_submodule(n).weight.data.copy_(out.get_submodule(n).weight.data)
    assert_close(seen[out.get_submodule(d1)], gram(half, d1), rtol=1e-9, atol=1e-9)
    assert not np.allclose(gram(ref, d1), gram(half, d1))  # the check above can tell the two apart
    with pytest.raises(ValueError, match="callable"):
        calibrated_quantize_model(ref, 3, names, [{"input_ids": ids}], replace="gptq")
