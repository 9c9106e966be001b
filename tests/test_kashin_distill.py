"""distill_floats: bias / norm tuning of a quantized model towards its float reference."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402

from lrmath.errors import ArgumentTypeError, NonFiniteError, OptionError  # noqa: E402
from lrmath.torch.kashin import KashinLinear, distill_floats, load_quantized, quantize_model, save_quantized  # noqa: E402

from . import torch_models  # noqa: E402


def _batches(n=6, b=3, s=10, seed=0, mask=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, torch_models.VOCAB, (b, s), generator=g)
        if mask:
            am = torch.ones(b, s, dtype=torch.long)
            am[0, s // 2:] = 0  # one padded row: padding must stay out of the loss
            out.append({"input_ids": ids, "attention_mask": am})
        else:
            out.append(ids)
    return out


def _quantized(kind):
    ref = torch_models.llama(torch.float32, 3) if kind == "llama" else torch_models.bert(torch.float32, 3)
    if kind == "llama":  # a random init predicts nearly uniform tokens: sharpen it so the KL is not ~0
        with torch.no_grad():
            ref.lm_head.weight.mul_(20.0)
    if kind == "bert":  # BertModel's default biases are zero: start from a non-trivial float model
        with torch.no_grad():
            for n, p in ref.named_parameters():
                if n.endswith("bias"):
                    p.normal_(0.0, 0.05)
    model = copy.deepcopy(ref)
    quantize_model(model, bits=2, block=32, iters=2)
    return ref, model


class _NanLogits(torch.nn.Module):
    """A reference whose logits are NaN: every distillation step's loss is non-finite."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *a, **k):
        out = self.inner(*a, **k)
        out.logits = out.logits * float("nan")
        return out


def test_llama_kl_reduces_the_output_error_and_only_norms_move():
    ref, model = _quantized("llama")
    data = _batches()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bufs = {n: b.detach().clone() for n, b in model.named_buffers()}
    ref_state = {n: p.detach().clone() for n, p in ref.state_dict().items()}
    kl0 = torch_models.kl_by_hand(model, ref, data)
    emb = model.model.embed_tokens.weight
    emb.grad = torch.ones_like(emb)  # a gradient the user accumulated: not ours to clear
    rep = distill_floats(model, ref, data, steps=60, lr=1e-2)
    assert emb.grad is not None and torch.equal(emb.grad, torch.ones_like(emb))
    kl1 = torch_models.kl_by_hand(model, ref, data)
    assert rep["loss"] == "kl" and len(rep["losses"]) == 60
    # the first recorded loss is the KL of the untouched model on that batch: within the batches' range
    assert 0 < rep["losses"][0] < 10 * kl0
    assert kl1 < 0.85 * kl0, (kl0, kl1)  # 0.71 measured; an untrained model stays at 1.0
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    norms = {n for n in before if "norm" in n}  # Llama: RMSNorm weights, no biases
    assert moved and moved <= norms
    assert all(torch.equal(b, bufs[n]) for n, b in model.named_buffers())  # codes and scales untouched
    assert all(torch.equal(p, ref_state[n]) for n, p in ref.state_dict().items())
    assert rep["parameters"] == sum(before[n].numel() for n in norms)
    # requires_grad flags as on entry (quantize_model leaves the float parameters trainable)
    assert all(p.requires_grad for p in model.parameters())


def test_bert_cosine_with_padding_and_biases(tmp_path):
    ref, model = _quantized("bert")
    data = _batches(mask=True)

    def cos_loss(m):
        from lrmath.torch.model import mean_pool
        tot = 0.0
        with torch.no_grad():
            for item in data:
                a = mean_pool(m(**item), item["attention_mask"])
                b = mean_pool(ref(**item), item["attention_mask"])
                tot += float((1 - F.cosine_similarity(a, b)).mean())
        return tot

    c0 = cos_loss(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():  # a frozen model: the flags must come back frozen
        p.requires_grad_(False)
    rep = distill_floats(model, ref, data, steps=80, lr=3e-3, params="bias")
    assert rep["loss"] == "cosine"
    assert cos_loss(model) < 0.8 * c0
    assert not any(p.requires_grad for p in model.parameters())
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.endswith(".bias") for n in moved), moved  # LayerNorm weights stay
    assert all(p.grad is None for p in model.parameters())
    # the tuned biases live in the quantized checkpoint and come back on load
    path = tmp_path / "q.safetensors"
    save_quantized(model, path)
    fresh = load_quantized(copy.deepcopy(ref), path)
    assert any(isinstance(m, KashinLinear) for m in fresh.modules())
    x = data[0]
    torch.testing.assert_close(fresh(**x).last_hidden_state, model(**x).last_hidden_state)


def test_identical_copy_is_a_fixed_point():
    ref = torch_models.llama(torch.float64, 1)
    model = copy.deepcopy(ref)
    rep = distill_floats(model, ref, _batches(n=2), steps=3, lr=1e-2, loss="mse")
    assert max(rep["losses"]) < 1e-20
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n


def test_nonfinite_loss_restores_and_raises():
    ref, model = _quantized("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = _batches(n=2)

    with pytest.raises(NonFiniteError):
        distill_floats(model, _NanLogits(ref), data, steps=2)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("kw, err", [
    ({"steps": 0}, OptionError), ({"lr": 0.0}, OptionError), ({"lr": float("nan")}, NonFiniteError),
    ({"params": ("weights",)}, OptionError), ({"params": ()}, OptionError), ({"params": 3}, ArgumentTypeError),
    ({"loss": "l1"}, OptionError), ({"seed": -1}, OptionError),
])
def test_option_errors(kw, err):
    ref, model = _quantized("llama")
    with pytest.raises(err):
        distill_floats(model, ref, _batches(n=1), **kw)


def test_input_errors():
    ref, model = _quantized("llama")
    with pytest.raises(OptionError):
        distill_floats(model, ref, [], steps=1)
    with pytest.raises(OptionError):
        distill_floats(model, model, _batches(n=1), steps=1)
    shallow = copy.copy(ref)  # the same parameter tensors: tuning would change the reference
    with pytest.raises(OptionError, match="share"):
        distill_floats(ref, shallow, _batches(n=1), steps=1)
    with pytest.raises(ArgumentTypeError):
        distill_floats(model, "ref", _batches(n=1), steps=1)
    with pytest.raises(OptionError):  # texts without a tokenizer
        distill_floats(model, ref, ["some text"], steps=1)
    bert_ref, bert_q = _quantized("bert")
    with pytest.raises(OptionError):  # KL needs logits
        distill_floats(bert_q, bert_ref, _batches(n=1), steps=1, loss="kl")
    with pytest.raises(OptionError):  # no norms or biases at all
        distill_floats(torch.nn.Linear(3, 3, bias=False), torch.nn.Linear(3, 3), [torch.ones(1, 3)], steps=1)


def _calibrated(kind="llama", **kw):
    ref, _ = _quantized(kind)
    model = copy.deepcopy(ref)
    quantize_model(model, bits=2, block=32, iters=2, calibration=_batches(n=3), **kw)
    return ref, model


@pytest.mark.parametrize("layout", ["flat", "rows"])
def test_tuning_parts_rebuild_the_stored_weight(layout):
    # at gains 1, W_hat = G_u * U_hat + G_v * V_hat must be the layer's own dequantized weight, as
    # dequantize() decodes it; a gain g on one block's scale must equal re-decoding with scale * g
    ref, model = _quantized("llama") if layout == "flat" else _calibrated()
    layers = [m for m in model.modules() if isinstance(m, KashinLinear)]
    assert layers and {m.layout for m in layers} == {layout}
    for m in layers:
        dense = m.dequantize()
        m._start_scale_tuning()
        try:
            torch.testing.assert_close(m._scaled_weight().detach(), dense, rtol=1e-5, atol=1e-6)
            x = torch.randn(4, m.in_features)
            y = m(x)
            assert y.requires_grad  # the scales are parameters now
            torch.testing.assert_close(y.detach(), x @ dense.T + (m.bias if m.bias is not None else 0),
                                       rtol=1e-4, atol=1e-5)
            with torch.no_grad():  # scale block 1 of v by 2 (exact in float16), block 0 of u by 0.5
                m.gain_v[1] = 2.0
                m.gain_u[0] = 0.5
            tuned = m._scaled_weight().detach()
        finally:
            m._stop_scale_tuning()
        assert m.scale_u.dtype == torch.float16 and "scale_u" in m._buffers
        assert not hasattr(m, "gain_u") and m._tuning is None
        torch.testing.assert_close(m.dequantize(), tuned, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(tuned, dense)


@pytest.mark.parametrize("layout", ["flat", "rows"])
def test_scales_distill_lowers_the_kl_and_keep_the_format(layout, tmp_path):
    ref, model = _quantized("llama") if layout == "flat" else _calibrated()
    data = _batches()
    bufs = {n: b.detach().clone() for n, b in model.named_buffers()}
    norms_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    kl0 = torch_models.kl_by_hand(model, ref, data)
    n_scales = sum(m.scale_u.numel() + m.scale_v.numel() for m in model.modules() if isinstance(m, KashinLinear))
    rep = distill_floats(model, ref, data, steps=60, lr=3e-3, params="scales")
    kl1 = torch_models.kl_by_hand(model, ref, data)
    assert kl1 < 0.9 * kl0, (kl0, kl1)  # 0.77 (flat) and 0.73 (rows) measured; untouched scales stay at 1.0
    assert rep["parameters"] == n_scales
    # only the scales moved; they are float16 buffers again, codes and tables untouched
    for n, b in model.named_buffers():
        if n.rsplit(".", 1)[-1] in ("scale_u", "scale_v"):
            assert b.dtype == torch.float16
        elif n in bufs:
            assert torch.equal(b, bufs[n]), n
    assert any(not torch.equal(b, bufs[n]) for n, b in model.named_buffers() if n.endswith("scale_u"))
    assert all(torch.equal(p, norms_before[n]) for n, p in model.named_parameters())
    assert not any("gain" in n for n, _ in model.named_parameters())
    # the stored file holds the tuned scales and the same bits per weight
    bpw = [m.bits_per_weight for m in model.modules() if isinstance(m, KashinLinear)]
    path = tmp_path / "q.safetensors"
    save_quantized(model, path)
    fresh = load_quantized(copy.deepcopy(ref), path)
    assert [m.bits_per_weight for m in fresh.modules() if isinstance(m, KashinLinear)] == bpw
    x = data[0]
    torch.testing.assert_close(fresh(input_ids=x).logits, model(input_ids=x).logits)


def test_scales_with_norms_and_restore_on_failure():
    ref, model = _calibrated()
    data = _batches(n=2)
    rep = distill_floats(model, ref, data, steps=3, lr=1e-3, params=("norm", "scales"))
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    scales = sum(m.scale_u.numel() * 2 for m in model.modules() if isinstance(m, KashinLinear))
    assert rep["parameters"] == norms + scales
    bufs = {n: b.detach().clone() for n, b in model.named_buffers()}

    with pytest.raises(NonFiniteError):
        distill_floats(model, _NanLogits(ref), data, steps=2, params=("norm", "scales"))
    for n, b in model.named_buffers():
        assert b.dtype == bufs[n].dtype and torch.equal(b, bufs[n]), n


def test_scales_need_kashin_layers():
    ref = torch_models.llama(torch.float32, 1)
    with pytest.raises(OptionError, match="KashinLinear"):
        distill_floats(copy.deepcopy(ref), ref, _batches(n=1), steps=1, params=("norm", "scales"))
