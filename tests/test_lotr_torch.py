"""lrmath.torch.LoTR / apply_lotr: gradients (gradcheck, naive formulas), grouping, init, merge."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lrmath import lotr  # noqa: E402
from lrmath.errors import RankError, ShapeError  # noqa: E402
from lrmath.testing import assert_close  # noqa: E402
from lrmath.torch.lotr import LoTR, LoTRLinear, _PlannedLoTR, apply_lotr, merge_lotr  # noqa: E402


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """One BLAS thread per test process: under ``-n 2`` on 2 cores, multi-threaded OpenBLAS
    oversubscribes the cores and its spinning threads slow the SVDs here by 10-20x."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpoolctl.threadpool_limits(1):
        yield
    torch.set_num_threads(n)


def _lotr64(inn, out, L, ra, rb, seed):
    torch.manual_seed(seed)
    lt = LoTR(inn, out, L, ra, rank_out=rb, scale=0.7, dtype=torch.float64, seed=seed)
    with torch.no_grad():
        lt.G.normal_()
    return lt


@settings(max_examples=12)
@given(st.integers(1, 5), st.integers(1, 7), st.integers(1, 7), st.integers(1, 3), st.integers(1, 3),
       st.lists(st.integers(0, 4), min_size=5, max_size=5), st.integers(0, 1000))
def test_planned_function_gradcheck_every_order(t, inn, out, ra, rb, idx, seed):
    ra, rb = min(ra, inn), min(rb, out)
    ra, rb = min(ra, 2 * rb), min(rb, 2 * ra)  # a valid multilinear rank for L = 2
    lt = _lotr64(inn, out, 2, ra, rb, seed)
    x = torch.randn(t, inn, dtype=torch.float64, requires_grad=True)
    p = lotr.plan(t, inn, out, ra, 1, r_b=rb, orders=dict(zip(("fwd", "dX", "dA", "dB", "dG"), idx)))
    f = lambda x, A, G, B: _PlannedLoTR.apply(x, A, G, B, 0.7, p)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, lt.A, lt.G[1].detach().clone().requires_grad_(), lt.B))


@pytest.mark.parametrize("planned", [True, False])
def test_module_gradients_match_naive_formulas(planned):
    L, inn, out, ra, rb, t, s = 3, 9, 6, 3, 2, 5, 0.7
    lt = _lotr64(inn, out, L, ra, rb, 1)
    lt.planned = planned
    xs = [torch.randn(2, t, inn, dtype=torch.float64, requires_grad=True) for _ in range(L)]
    dys = [torch.randn(2, t, out, dtype=torch.float64) for _ in range(L)]
    ys = [lt.delta(xs[l], l) for l in range(L)]
    sum((y * dy).sum() for y, dy in zip(ys, dys)).backward()
    A, B, G = lt.A.detach(), lt.B.detach(), lt.G.detach()
    X = [x.detach().reshape(-1, inn) for x in xs]
    dY = [d.reshape(-1, out) for d in dys]
    # y_l = s x A G_l B^T (torch layout: A (in, r_a), B (out, r_b))
    for l in range(L):
        assert_close(ys[l].detach().reshape(-1, out), s * X[l] @ A @ G[l] @ B.T, n=inn)
        assert_close(xs[l].grad.reshape(-1, inn), s * dY[l] @ B @ G[l].T @ A.T, n=out)
        assert_close(lt.G.grad[l], s * A.T @ X[l].T @ dY[l] @ B, n=2 * t * inn)
    assert_close(lt.A.grad, s * sum(X[l].T @ dY[l] @ B @ G[l].T for l in range(L)), n=2 * t * out)
    assert_close(lt.B.grad, s * sum(dY[l].T @ X[l] @ A @ G[l] for l in range(L)), n=2 * t * inn)


def test_auto_uses_the_planned_function_only_where_it_saves_flops():
    from lrmath.lotr.adapter import AUTOGRAD_ORDERS

    # t >> r on a 384x384 layer: autograd's orders are within 10% of the optimum -> plain autograd
    big = LoTR(384, 384, 2, 8)
    assert big._plan(512) is None
    ref = lotr.plan(512, 384, 384, 8, 1, orders=AUTOGRAD_ORDERS)
    assert lotr.plan(512, 384, 384, 8, 1).flops >= 0.9 * ref.flops
    # r = m = n (tiny layer): merging A G B^T first is ~3x cheaper -> the planned Function
    small = LoTR(4, 4, 2, 4)
    p = small._plan(512)
    assert p is not None and p.flops < 0.9 * lotr.plan(512, 4, 4, 4, 1, orders=AUTOGRAD_ORDERS).flops
    assert LoTR(4, 4, 2, 4, planned=False)._plan(512) is not None  # _plan itself; delta skips it
    with pytest.raises(ValueError, match="planned"):
        LoTR(4, 4, 2, 4, planned="yes")


def test_module_gradcheck_through_wrapped_layers():
    lt = _lotr64(5, 4, 2, 2, 2, 3)
    lt.planned = True
    bases = [nn.Linear(5, 4).double() for _ in range(2)]
    wrapped = [LoTRLinear(b, lt, i) for i, b in enumerate(bases)]
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

    def f(x, A, B, G):
        lt.A, lt.B, lt.G = A, B, G  # functional: plain tensors in place of the Parameters
        return wrapped[0](x) * wrapped[1](x)

    params = (lt.A.detach().clone().requires_grad_(), lt.B.detach().clone().requires_grad_(),
              lt.G.detach().clone().requires_grad_())
    saved = (lt.A, lt.B, lt.G)
    try:
        del lt.A, lt.B, lt.G
        assert torch.autograd.gradcheck(f, (x, *params))
    finally:
        lt.A, lt.B, lt.G = saved


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            [nn.ModuleDict({"query": nn.Linear(8, 8), "value": nn.Linear(8, 8), "up": nn.Linear(8, 12),
                            "down": nn.Linear(12, 8)}) for _ in range(3)])

    def forward(self, x):
        for b in self.blocks:
            x = torch.tanh(b["query"](x) + b["value"](x))
            x = x + b["down"](torch.relu(b["up"](x)))
        return x


def test_apply_lotr_small_model_groups_init_merge():
    torch.manual_seed(0)
    model = Tiny().double()
    x = torch.randn(4, 8, dtype=torch.float64)
    y0 = model(x).detach()
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    ad = apply_lotr(model, ["query", "value", "up", "down"], 2)
    assert set(ad.keys()) == {"8x8", "12x8", "8x12"}
    assert ad["8x8"].n_layers == 6 and ad["12x8"].n_layers == 3
    assert ad["8x8"].layer_names[:2] == ["blocks.0.query", "blocks.0.value"]
    # zero cores: the model is unchanged; only LoTR parameters train
    assert_close(model(x).detach(), y0, n=12)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected = sum(lotr.lotr_params(l.in_features, l.out_features, 2, l.n_layers) for l in ad.values())
    assert trainable == expected == (2 * 8 + 2 * 8 + 6 * 2 * 2) + 2 * (2 * 8 + 2 * 12 + 3 * 2 * 2)
    # random cores: output equals the naive merged weights W + s B G^T A^T
    with torch.no_grad():
        for lt in ad.values():
            lt.G.normal_()
    y1 = model(x).detach()
    ref = Tiny().double()
    ref.load_state_dict({k.replace(".base", ""): v for k, v in model.state_dict().items() if "lotr_adapters" not in k})
    with torch.no_grad():
        for lt in ad.values():
            for i, name in enumerate(lt.layer_names):
                lin = ref.get_submodule(name)
                lin.weight.copy_(weights[name] + lt.scale * lt.B @ lt.G[i].T @ lt.A.T)
    assert_close(y1, ref(x).detach(), n=12, depth=3)
    # merge for inference: plain nn.Linear layers, same outputs
    merge_lotr(model)
    assert not hasattr(model, "lotr_adapters")
    assert not any(isinstance(m, LoTRLinear) for m in model.modules())
    assert_close(model(x).detach(), y1, n=12, depth=3)


def test_apply_lotr_options_and_errors():
    model = Tiny()
    ad = apply_lotr(model, ["query", "value"], 2, group_by="name")
    assert set(ad.keys()) == {"query_8x8", "value_8x8"}
    with pytest.raises(ValueError, match="already"):
        apply_lotr(model, ["up"], 2)
    with pytest.raises(ValueError, match="no nn.Linear"):
        apply_lotr(Tiny(), ["nothing"], 2)
    with pytest.raises(RankError):
        apply_lotr(Tiny(), ["up"], 9)
    regex = apply_lotr(Tiny(), r"blocks\.[01]\.up", 3)
    assert regex["12x8"].n_layers == 2
    with pytest.raises(ValueError, match="updates"):
        apply_lotr(Tiny(), ["up"], 2, init="tucker")
    with pytest.raises(RankError):
        LoTR(8, 8, 1, 3, rank_out=1)  # r_a > L r_b
    lt = LoTR(8, 6, 2, 2)
    with pytest.raises(ShapeError):
        lt.delta(torch.randn(3, 7), 0)


def test_unmerge_and_tucker_init_reproduce_updates():
    torch.manual_seed(1)
    model = Tiny().double()
    # updates of exact multilinear rank (2, 2) shared by the six 8x8 layers
    g = np.random.default_rng(2)
    A, B, G = g.standard_normal((8, 2)), g.standard_normal((8, 2)), g.standard_normal((6, 2, 2))
    names = [f"blocks.{i}.{k}" for i in range(3) for k in ("query", "value")]
    upd = {n: torch.from_numpy(B @ G[i].T @ A.T) for i, n in enumerate(names)}  # (out, in)
    w0 = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    ad = apply_lotr(model, ["query", "value"], 2, init="tucker", updates=upd)
    lt = ad["8x8"]
    assert lt.decomposition.error < 1e-12
    for i, n in enumerate(names):
        mod = model.get_submodule(n)
        assert_close(lt.delta_weight(i).detach(), upd[n], n=8, depth=3, atol=1e-12)
        mod.merge()
        assert_close(mod.base.weight.detach(), w0[n] + upd[n], n=8, depth=3)
        mod.unmerge()
        assert_close(mod.base.weight.detach(), w0[n], n=8, depth=3)


@pytest.fixture(scope="module")
def default_model():
    data = pytest.importorskip("lrmath.data")
    try:
        return data, data.load_model()
    except Exception as exc:  # noqa: BLE001 - the demo extra may be missing outside CI
        pytest.skip(f"default model unavailable: {exc}")


def test_apply_lotr_on_default_model(default_model):
    data, model = default_model
    batch = data.task_batch(n_pairs=2, max_length=12)
    with torch.no_grad():
        before = data.loss(model, batch)
    ad = apply_lotr(model, ["query", "value"], 8)
    assert list(ad.keys()) == ["384x384"]
    lt = ad["384x384"]
    assert lt.n_layers == 12 and lt.layer_names[0] == "encoder.layer.0.attention.self.query"
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 8 * 768 + 12 * 64
    loss = data.loss(model, batch)
    assert_close(loss.detach(), before, n=384 * 6, depth=6)  # zero cores: the base model
    loss.backward()
    assert lt.G.grad is not None and float(lt.G.grad.abs().sum()) > 0
    assert lt.A.grad is not None and float(lt.A.grad.abs().sum()) == 0  # dA ∝ G = 0 at start
    assert all(p.grad is None for n, p in model.named_parameters() if "lotr_adapters" not in n)
    # one step moves the loss; merging keeps the trained function
    with torch.no_grad():
        lt.G -= 50.0 * lt.G.grad
        trained = data.loss(model, batch)
    assert float(trained) != float(before)
    merge_lotr(model)
    with torch.no_grad():
        assert_close(data.loss(model, batch), trained, n=384 * 6, depth=6)
