"""RunLoRA in PyTorch: gradcheck of the graphs, saved tensors, LoRALinear, convert_peft, PEFT parity."""

from __future__ import annotations

import copy
import warnings

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from lrmath.errors import RankError, ShapeError  # noqa: E402
from lrmath.testing import assert_close  # noqa: E402
from lrmath.runlora import graph_space, peft_pair  # noqa: E402
from lrmath.torch.runlora import LoRALinear, convert_peft, lora_function  # noqa: E402

torch.set_num_threads(2)


def _torch_ref(x, w, b, A, B, s, mask=None):
    xd = x * mask if mask is not None else x
    y = x @ w.T + s * (xd @ A.T) @ B.T
    return y + b if b is not None else y


def _pairs_for_gradcheck(sp):
    """Every forward graph (with a compatible backward), and a fixed spread of backward graphs."""
    pairs = []
    for f in sp.forward:
        pairs.append((f, next(b for b in sp.backward if b.saved <= f.computes and not b.saved)))
        with_saved = [b for b in sp.backward if b.saved and b.saved <= f.computes]
        if with_saved:
            pairs.append((f, with_saved[0]))
    step = max(1, len(sp.backward) // 12)
    for b in sp.backward[::step]:
        pairs.append((next(f for f in sp.forward if b.saved <= f.computes), b))
    pairs.append(peft_pair(sp))
    return pairs


@pytest.mark.parametrize("flags", [dict(), dict(bias=True, dropout=True, w_grad=True)], ids=["plain", "all"])
def test_gradcheck_graphs_float64(flags):
    sp = graph_space(**flags)
    g = torch.Generator().manual_seed(0)
    t, m, n, r = 3, 4, 3, 2
    x = torch.randn(t, m, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n, m, generator=g, dtype=torch.float64, requires_grad=flags.get("w_grad", False))
    b = torch.randn(n, generator=g, dtype=torch.float64, requires_grad=True) if flags.get("bias") else None
    A = torch.randn(r, m, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(n, r, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(t, m, generator=g) > 0.3 if flags.get("dropout") else None
    pairs = _pairs_for_gradcheck(sp)
    assert len(pairs) >= len(sp.forward) + 12
    for f, bw in pairs:
        fn = lambda x, w, b, A, B: lora_function(x, w, b, A, B, 0.7, mask=mask, graphs=(f, bw))  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w, b, A, B), eps=1e-6, atol=1e-7, nondet_tol=0.0), (f.name, bw.name)
    # and the values against the dense formula
    y = lora_function(x, w, b, A, B, 0.7, mask=mask, graphs=pairs[0])
    torch.testing.assert_close(y, _torch_ref(x, w, b, A, B, 0.7, mask))


def _saved_activation_bytes(fn, params):
    """Bytes of tensors autograd keeps that are not parameters (activations)."""
    ptrs = {p.data_ptr() for p in params}
    sizes = []

    def pack(tn):
        if tn.data_ptr() not in ptrs:
            sizes.append(tn.numel() * tn.element_size())
        return tn

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tn: tn):
        out = fn()
    return sum(sizes), out


@pytest.mark.parametrize("dropout", [False, True])
def test_saved_tensors_match_the_plan(dropout):
    t, m, n, r = 37, 24, 20, 4
    sp = graph_space(dropout=dropout)
    x = torch.randn(t, m, requires_grad=True)
    w = torch.randn(n, m)
    A = torch.randn(r, m, requires_grad=True)
    B = torch.randn(n, r, requires_grad=True)
    mask = torch.rand(t, m) > 0.5 if dropout else None
    pf, pb = peft_pair(sp)
    cands = _pairs_for_gradcheck(sp)[::3] + [(pf, pb)]
    seen = set()
    for f, b in cands:
        nbytes, y = _saved_activation_bytes(
            lambda: lora_function(x, w, None, A, B, 0.5, mask=mask, graphs=(f, b)), [w, A, B])
        assert nbytes == sp.saved_bytes(f, b, 4)(t, m, n, r), (f.name, b.name)
        seen.add(nbytes)
        y.sum().backward()
    assert len(seen) >= 2  # different graphs really save different things
    # PEFT's real layer saves what our PEFT pair says it saves (X, X A; X_d and the mask)
    wrapped = torch.nn.Sequential(torch.nn.Linear(m, n, bias=False))
    pm = peft.get_peft_model(wrapped, peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["0"],
                                                      lora_dropout=0.3 if dropout else 0.0))
    pm.train()
    params = [p for p in pm.parameters()]
    peft_bytes, _ = _saved_activation_bytes(lambda: pm(x), params)
    # nn.Dropout saves a float mask (4 bytes/elt) where we keep a bool one
    expect = sp.saved_bytes(pf, pb, 4)(t, m, n, r) + (3 * t * m if dropout else 0)
    assert peft_bytes == expect


def test_lora_linear_layer():
    torch.manual_seed(0)
    layer = LoRALinear(12, 10, 3, lora_alpha=6, bias=True).double()
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    ref = _torch_ref(x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, 2.0)
    torch.testing.assert_close(y, ref)
    gx, gA, gB = torch.autograd.grad(y.square().sum(), (x, layer.lora_A, layer.lora_B))
    rx, rA, rB = torch.autograd.grad(ref.square().sum(), (x, layer.lora_A, layer.lora_B))
    for a, b in ((gx, rx), (gA, rA), (gB, rB)):
        torch.testing.assert_close(a, b)
    assert layer.weight.grad is None and not layer.weight.requires_grad
    # merge / unmerge
    with torch.no_grad():
        y0 = layer(x)
        layer.merge()
        torch.testing.assert_close(layer(x), y0)
        layer.unmerge()
        torch.testing.assert_close(layer(x), y0)
    # dropout: training uses a mask, eval does not
    layer.lora_dropout = 0.5
    layer.train()
    K = torch.rand(2, 5, 12) > 0.5
    layer.mask_fn = lambda x, p: K
    torch.testing.assert_close(layer(x), _torch_ref(x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, 4.0, K))
    layer.eval()
    torch.testing.assert_close(layer(x), y0)
    with pytest.raises(RankError):
        LoRALinear(4, 3, 4)
    with pytest.raises(ShapeError):
        layer(torch.randn(3, 11, dtype=torch.float64))
    p = layer.plan(tokens=10)
    assert p.m == 12 and p.n == 10


def test_train_weight_and_frozen_input():
    torch.manual_seed(1)
    layer = LoRALinear(8, 6, 2, lora_alpha=2, train_weight=True).double()
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(7, 8, dtype=torch.float64)  # first layer: X needs no grad
    y = layer(x)
    y.square().sum().backward()
    w = layer.weight.detach().clone().requires_grad_()
    A = layer.lora_A.detach().clone().requires_grad_()
    B = layer.lora_B.detach().clone().requires_grad_()
    _torch_ref(x, w, layer.bias, A, B, 1.0).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, w.grad)
    torch.testing.assert_close(layer.lora_A.grad, A.grad)
    torch.testing.assert_close(layer.lora_B.grad, B.grad)


# ----------------------------------------------------------------------------- PEFT
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(16, 24)
        self.down = torch.nn.Linear(24, 16)
        self.head = torch.nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.down(torch.relu(self.up(x))))


def _peft_tiny(dropout=0.0, r=4):
    torch.manual_seed(0)
    cfg = peft.LoraConfig(r=r, lora_alpha=8, lora_dropout=dropout, target_modules=["up", "down", "head"],
                          init_lora_weights="gaussian")
    return peft.get_peft_model(_Tiny().double(), cfg)


def test_convert_peft_adapters_merge_state_dict():
    pm = _peft_tiny()
    pm.add_adapter("second", peft.LoraConfig(r=2, lora_alpha=2, target_modules=["up", "down"],
                                             init_lora_weights="gaussian"))
    ref = copy.deepcopy(pm)
    keys = list(pm.state_dict())
    with pytest.warns(UserWarning, match=r"head.*r=4 > min"):
        convert_peft(pm)
    assert list(pm.state_dict()) == keys
    assert type(pm.base_model.model.up).__name__.startswith("RunLoRA")
    assert type(pm.base_model.model.head).__name__ == "Linear"
    x = torch.randn(5, 16, dtype=torch.float64, requires_grad=True)
    for name in ("default", "second"):
        pm.set_adapter(name)
        ref.set_adapter(name)
        torch.testing.assert_close(pm(x), ref(x))
        g1 = torch.autograd.grad(pm(x).sum(), [x] + [p for p in pm.parameters() if p.requires_grad])
        g2 = torch.autograd.grad(ref(x).sum(), [x] + [p for p in ref.parameters() if p.requires_grad])
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b)
    # a saved adapter loads either way
    pm.load_state_dict(ref.state_dict())
    # merge / unmerge / merge_and_unload are PEFT's own and still work
    pm.set_adapter("default")
    with torch.no_grad():
        y0 = pm(x)
        pm.base_model.merge_adapter()
        torch.testing.assert_close(pm(x), y0)
        pm.base_model.unmerge_adapter()
        torch.testing.assert_close(pm(x), y0)
        merged = pm.merge_and_unload()
        assert isinstance(merged.up, torch.nn.Linear)
        torch.testing.assert_close(merged(x), y0)


def test_convert_peft_fan_in_fan_out_conv1d():
    from transformers.pytorch_utils import Conv1D

    class G(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = Conv1D(18, 12)  # GPT-2 layout: weight (in, out)

        def forward(self, x):
            return self.c_attn(x)

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(G().double(), peft.LoraConfig(r=3, target_modules=["c_attn"], fan_in_fan_out=True,
                                                               init_lora_weights="gaussian"))
    ref = copy.deepcopy(pm)
    convert_peft(pm)
    x = torch.randn(2, 4, 12, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(pm(x), ref(x))
    ga = torch.autograd.grad(pm(x).square().sum(), [x, *[p for p in pm.parameters() if p.requires_grad]])
    gb = torch.autograd.grad(ref(x).square().sum(), [x, *[p for p in ref.parameters() if p.requires_grad]])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


def test_autocast_checkpoint_compile_smoke():
    pm = _peft_tiny(dropout=0.1).float()
    convert_peft(pm)
    pm.train()
    x = torch.randn(6, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pm(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(p.grad is not None for p in pm.parameters() if p.requires_grad)
    # gradient checkpointing reruns the forward: the RNG state (hence the dropout mask) is replayed
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(3)
    y1 = checkpoint(pm, x, use_reentrant=False)
    y1.sum().backward()
    # torch.compile tracing through our autograd.Function (planning is excluded from tracing);
    # the eager backend keeps it fast on CPU
    cm = torch.compile(pm, backend="eager")
    try:
        yc = cm(x)
        yc.sum().backward()
    except Exception as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch.compile failed here: {type(exc).__name__}: {exc}")
    assert yc.shape == (6, 2) and torch.isfinite(yc).all()


def test_per_step_gradients_equal_peft_on_default_model(monkeypatch):
    """PEFT-wrapped default model, dropout 0.1 with shared masks: per-step gradients for 20 SGD steps, float64."""
    data = pytest.importorskip("lrmath.data")
    try:
        base = data.load_model(dtype=torch.float64)
    except Exception as exc:  # pragma: no cover - the demo model is optional
        pytest.skip(f"default model unavailable: {exc}")
    import lrmath.torch.runlora as rl

    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["query", "value", "dense"],
                          init_lora_weights="gaussian")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(copy.deepcopy(base), cfg)
    ours = copy.deepcopy(ref)
    convert_peft(ours)

    state = {"i": 0, "step": 0}

    def shared_mask(x, p):
        state["i"] += 1
        g = torch.Generator().manual_seed(1000 * state["step"] + state["i"])
        return torch.rand(x.shape, generator=g, dtype=torch.float64) >= p

    class SharedDropout(torch.nn.Module):
        def __init__(self, p):
            super().__init__()
            self.p = p

        def forward(self, x):
            return x * shared_mask(x, self.p) / (1 - self.p)

    for mod in ref.modules():
        if isinstance(mod, peft.tuners.lora.Linear):
            for k in mod.lora_dropout:
                mod.lora_dropout[k] = SharedDropout(0.1)
    monkeypatch.setattr(rl, "_dropout_mask", shared_mask)
    opt_r = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.5)
    opt_o = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.5)
    ref.train()
    ours.train()
    for step in range(20):
        batch = data.task_batch(n_pairs=2, max_length=8, step=step)
        # identical parameters at every step (the PEFT state dict loads into the converted model
        # as is); comparing whole trajectories would only measure chaotic rounding growth
        ours.load_state_dict(ref.state_dict())
        grads = []
        for model, opt in ((ref, opt_r), (ours, opt_o)):
            state.update(i=0, step=step)
            torch.manual_seed(step)  # the model's own dropout layers draw the same masks in both
            opt.zero_grad()
            loss = data.loss(model, batch)
            loss.backward()
            grads.append((loss.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                          for p in model.parameters() if p.requires_grad]))
            opt.step()
        # float64 through 6 layers of reductions of length <= 1536 (hidden x 4): lrmath.testing's rule
        assert_close(grads[1][0], grads[0][0], n=1536, depth=24, err_msg=f"loss, step {step}")
        for (name, _), a, b in zip([np for np in ours.named_parameters() if np[1].requires_grad], grads[1][1], grads[0][1]):
            assert_close(a, b, n=1536, depth=24, err_msg=f"{name}, step {step}")
