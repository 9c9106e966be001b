"""SparseGradLinear and sparsegrad_mlp: exact forward, sparse gradient == dense gradient at the
selected entries, no dense (n, m) gradient, optimizer state of nnz entries, refresh."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import lrmath.sparsegrad as sg  # noqa: E402
from lrmath.errors import NonFiniteError, ShapeError  # noqa: E402
from lrmath.testing import assert_close  # noqa: E402
from lrmath.torch import SparseGradLinear, sparsegrad_mlp  # noqa: E402

N, M, T = 48, 20, 7


def _bases(kind, seed=0):
    if kind == "learned":
        r = np.random.default_rng(seed)
        return sg.learned_bases([r.standard_normal((N, 3)) @ r.standard_normal((3, M)) for _ in range(4)], dtype=np.float64)
    return sg.basis(kind, N, seed), sg.basis(kind, M, seed)


def _oracle(lin, U, V, idx, delta, x, dy):
    """Dense reference: W = W0 + U S V^T, y = x W^T + b; G~ = U^T dy^T x V."""
    n, m = lin.weight.shape
    Um, Vm = torch.from_numpy(U.matrix()), torch.from_numpy(V.matrix())
    S = torch.zeros(n * m, dtype=torch.float64)
    S[torch.from_numpy(idx)] = delta
    W = lin.weight.detach() + Um @ S.view(n, m) @ Vm.T
    y = x @ W.T + lin.bias.detach()
    Gt = Um.T @ (dy.T @ x) @ Vm
    return y, Gt.reshape(-1)[torch.from_numpy(idx)], dy @ W


@pytest.mark.parametrize("kind", ["dct", "hadamard", "random", "learned"])
@pytest.mark.parametrize("pattern", ["scattered", "block"])
def test_forward_and_sparse_gradient_match_dense(kind, pattern):
    torch.manual_seed(0)
    lin = nn.Linear(M, N).double()
    U, V = _bases(kind)
    r = np.random.default_rng(1)
    if pattern == "scattered":
        idx = np.sort(r.choice(N * M, 37, replace=False))
    else:  # leading 4x5 block: what the learned basis selects; takes the dense-block route
        idx = np.array([i * M + j for i in range(4) for j in range(5)])
    layer = SparseGradLinear.from_linear(lin, U, V, idx)
    assert layer._dense == (pattern == "block")
    _check_layer_against_oracle(layer, lin, U, V, idx, N, M)


def _check_layer_against_oracle(layer, lin, U, V, idx, n, m):
    """Forward is exact at delta = 0 (the zero update is an exact zero); after random delta the
    output, delta gradient and input gradient equal the independent dense oracle."""
    x = torch.randn(T, m, dtype=torch.float64)
    assert torch.equal(layer(x), lin(x))
    with torch.no_grad():
        layer.delta.normal_()
    xg = x.clone().requires_grad_(True)
    y = layer(xg)
    dy = torch.randn_like(y)
    y.backward(dy)
    y_ref, g_ref, dx_ref = _oracle(lin, U, V, idx, layer.delta.detach(), x, dy)
    assert_close(y.detach(), y_ref, n=n + m, depth=3)
    assert_close(layer.delta.grad, g_ref, n=T * max(n, m), depth=3)
    assert_close(xg.grad, dx_ref, n=n + m, depth=3)


@pytest.mark.parametrize("route", ["columns", "transform"])
@pytest.mark.parametrize("kind, n, m", [("dct", 48, 20), ("dct", 64, 96), ("hadamard", 96, 64),
                                        ("hadamard", 384, 24), ("hadamard", 32, 16)])
def test_fast_transform_route_matches_dense(kind, n, m, route):
    """Both routes agree with the dense oracle; 96 = 32*3 and 384 = 128*3 exercise Hadamard's
    padding rule (H_p kron R_q), 32 x 16 the pure power-of-two case."""
    torch.manual_seed(0)
    lin = nn.Linear(m, n).double()
    U, V = sg.basis(kind, n, 3), sg.basis(kind, m, 4)
    idx = np.sort(np.random.default_rng(1).choice(n * m, max(8, n * m // 20), replace=False))
    layer = SparseGradLinear.from_linear(lin, U, V, idx, route=route)
    assert layer.routes == (route, route)
    assert (layer.UI is None) == (route == "transform") and (layer.VJ is None) == (route == "transform")
    _check_layer_against_oracle(layer, lin, U, V, idx, n, m)
    Um, Vm = torch.from_numpy(U.matrix()), torch.from_numpy(V.matrix())
    S = torch.zeros(n * m, dtype=torch.float64)
    S[torch.from_numpy(idx)] = layer.delta.detach()
    assert_close(layer.merged_weight(), lin.weight.detach() + Um @ S.view(n, m) @ Vm.T, n=n + m, depth=3)


def test_route_choice_by_flops_and_validation():
    lin = nn.Linear(M, N).double()
    r = np.random.default_rng(0)
    scattered = np.sort(r.choice(N * M, 200, replace=False))  # touches (nearly) all rows and cols
    U, V = _bases("dct")
    auto = SparseGradLinear.from_linear(lin, U, V, scattered)
    # auto follows the flop comparison: fast transform iff U.flops < 2 n |I| (per side)
    want_u = "transform" if U.flops < 2 * N * auto.rows_touched else "columns"
    want_v = "transform" if V.flops < 2 * M * auto.cols_touched else "columns"
    assert auto.routes == (want_u, want_v) and auto.routes[0] == "transform"
    # one touched row and column: a single dense column is cheaper than a transform
    one = SparseGradLinear.from_linear(lin, U, V, [0])
    assert one.routes == ("columns", "columns")
    Ul, Vl = _bases("learned")
    assert SparseGradLinear.from_linear(lin, Ul, Vl, scattered).routes == ("columns", "columns")
    Ur, Vr = _bases("random")
    assert SparseGradLinear.from_linear(lin, Ur, Vr, scattered).routes == ("columns", "columns")
    with pytest.raises(ValueError, match="fast-transform"):
        SparseGradLinear.from_linear(lin, Ul, Vl, scattered, route="transform")
    with pytest.raises(ValueError, match="route must be"):
        SparseGradLinear.from_linear(lin, U, V, scattered, route="fft")


def test_refresh_on_transform_route_keeps_function():
    torch.manual_seed(0)
    lin = nn.Linear(M, N).double()
    U, V = _bases("hadamard")
    layer = SparseGradLinear.from_linear(lin, U, V, np.arange(0, N * M, 7), route="transform")
    with torch.no_grad():
        layer.delta.normal_()
    x = torch.randn(T, M, dtype=torch.float64)
    before = layer(x).detach()
    info = layer.refresh(np.arange(3, N * M, 11))
    assert info["dropped"] > 0 and layer.routes == ("transform", "transform")
    assert_close(layer(x).detach(), before, n=N + M, depth=4)


def test_forward_exact_float32_batched_input():
    lin = nn.Linear(M, N)
    U, V = _bases("dct")
    layer = SparseGradLinear.from_linear(lin, U, V, np.arange(0, N * M, 17))
    x = torch.randn(2, 3, M)
    assert torch.equal(layer(x), lin(x))


class _Log(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(o, torch.Tensor) and not func.is_view:  # views allocate nothing
                self.sizes.append((str(func), o.numel()))
        return out


@pytest.mark.parametrize("kind, route", [("dct", "columns"), ("dct", "transform"), ("hadamard", "transform"),
                                         ("learned", "auto")])
def test_no_dense_gradient_is_materialised(kind, route):
    torch.manual_seed(0)
    lin = nn.Linear(M, N).double()
    U, V = _bases(kind)
    idx = np.sort(np.random.default_rng(2).choice(N * M, 30, replace=False))
    layer = SparseGradLinear.from_linear(lin, U, V, idx, route=route)
    x = torch.randn(T, M, dtype=torch.float64, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    log = _Log()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), log:
        layer(x).sum().backward()
    # every tensor produced by any op in forward + backward is far smaller than n x m
    # (the largest legitimate ones are x W^T (t, n), the (t, n) scatter buffer of the
    # transform route and the touched basis columns)
    big = [(f, s) for f, s in log.sizes if s >= N * M]
    assert not big, big
    # saved tensors are references to the layer's frozen buffers (weight, basis columns) or
    # small new ones (X V_J (t, |J|)); nothing new of size n x m is kept for backward
    own = {b.data_ptr() for b in layer.buffers()}
    new = [t for t in saved if t.data_ptr() not in own]
    assert new and all(t.numel() < N * M for t in new), [tuple(t.shape) for t in new]
    assert lin.weight.grad is None and layer.weight.grad is None
    assert layer.delta.grad.shape == (30,)


def test_optimizer_state_has_nnz_entries_and_training_reduces_loss():
    torch.manual_seed(0)
    lin = nn.Linear(M, N).double()
    U, V = _bases("learned")
    layer = SparseGradLinear.from_linear(lin, U, V, np.arange(25))
    assert [n for n, p in layer.named_parameters()] == ["delta"]
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    x = torch.randn(32, M, dtype=torch.float64)
    target = lin(x).detach() + 0.5
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = ((layer(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    state = opt.state[layer.delta]
    assert state["exp_avg"].numel() == 25 and state["exp_avg_sq"].numel() == 25


def test_refresh_keeps_function_and_state_of_kept_entries():
    torch.manual_seed(0)
    lin = nn.Linear(M, N).double()
    U, V = _bases("random")
    old = np.array([3, 10, 50, 77, 200, 401])
    layer = SparseGradLinear.from_linear(lin, U, V, old)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(T, M, dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        layer(x).pow(2).sum().backward()
        opt.step()
    before = layer(x).detach()
    d_old = layer.delta.detach().clone()
    m_old = opt.state[layer.delta]["exp_avg"].clone()
    new = np.array([3, 11, 50, 200, 500])
    info = layer.refresh(new, optimizer=opt)
    assert info == {"kept": 3, "added": 2, "dropped": 3}
    assert_close(layer(x).detach(), before, n=N + M, depth=4)
    np.testing.assert_array_equal(layer.delta.detach().numpy(), [d_old[0], 0, d_old[2], d_old[4], 0])
    np.testing.assert_array_equal(opt.state[layer.delta]["exp_avg"].numpy(), [m_old[0], 0, m_old[2], m_old[4], 0])
    opt.zero_grad()
    layer(x).pow(2).sum().backward()
    opt.step()  # the optimizer keeps working on the remapped state


def test_probing_collects_statistics_for_refresh():
    torch.manual_seed(0)
    lin = nn.Linear(M, N).double()
    U, V = _bases("dct")
    layer = SparseGradLinear.from_linear(lin, U, V, np.arange(10), selector=sg.IndexSelector((N, M), k=10, pool=None))
    layer.probing = True
    x = torch.randn(T, M, dtype=torch.float64)
    dy = torch.randn(T, N, dtype=torch.float64)
    layer(x).backward(dy)
    Gt = U.matrix().T @ (dy.numpy().T @ x.numpy()) @ V.matrix()
    want = np.sort(np.argsort(-np.abs(Gt.ravel()), kind="stable")[:10])
    layer.refresh()
    np.testing.assert_array_equal(layer.indices, want)


class _Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(d, h)
        self.output = nn.Module()
        self.output.dense = nn.Linear(h, d)
        self.attention = nn.Linear(d, d)

    def forward(self, x):
        x = self.attention(x)
        return self.output.dense(torch.tanh(self.intermediate.dense(x)))


@pytest.mark.parametrize("basis", ["learned", "dct"])
def test_sparsegrad_mlp_converts_mlp_linears(basis):
    torch.manual_seed(0)
    model = nn.Sequential(_Block(16, 32), _Block(16, 32)).double()
    x = torch.randn(10, 16, dtype=torch.float64)
    ref = model(x).detach()
    target = torch.randn(10, 16, dtype=torch.float64)
    layers = sparsegrad_mlp(model, density=0.05, basis=basis, warmup=lambda mdl: ((mdl(x) - target) ** 2).mean(), steps=3)
    assert sorted(layers) == ["0.intermediate.dense", "0.output.dense", "1.intermediate.dense", "1.output.dense"]
    assert isinstance(model[0].attention, nn.Linear) and not model[0].attention.weight.requires_grad
    assert torch.equal(model(x), ref)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"{n}.delta" for n in layers]
    assert all(lay.nnz == round(0.05 * 16 * 32) for lay in layers.values())


def test_bad_inputs_rejected():
    U, V = _bases("dct")
    with pytest.raises(ShapeError):
        SparseGradLinear(torch.ones(N), None, U, V, [0])
    with pytest.raises(ShapeError):
        SparseGradLinear(torch.ones(N, M), torch.ones(3), U, V, [0])
    with pytest.raises(NonFiniteError):
        SparseGradLinear(torch.full((N, M), float("nan")), None, U, V, [0])
    with pytest.raises(ShapeError):
        SparseGradLinear(torch.ones(N, M), None, sg.basis("dct", N + 1), V, [0])
    with pytest.raises(ValueError, match="sorted"):
        SparseGradLinear(torch.ones(N, M), None, U, V, [5, 2])
    layer = SparseGradLinear(torch.ones(N, M), None, U, V, [0, 1])
    with pytest.raises(ShapeError, match="features"):
        layer(torch.ones(3, M + 1))
    with pytest.raises(ValueError, match="warm-up"):
        sparsegrad_mlp(nn.Sequential(_Block(4, 8)))
    with pytest.raises(ValueError, match="no nn.Linear"):
        sparsegrad_mlp(nn.Sequential(nn.Linear(3, 3)), warmup=lambda m: None)


def test_sparsegrad_mlp_default_basis_and_index_set_oracle():
    """Default settings against a naive recomputation: Gram matrices of the normalised steps weighted
    by 0.85^(S-1-s), eigenvectors by decreasing eigenvalue, and the top-k of the sum over steps of
    0.97^(S-1-s) * (U^T G_s V)^2 / ||G_s||^2 (steps of very different sizes, so plain scores differ)."""
    g = np.random.default_rng(4)
    model = nn.Sequential(_Block(6, 10))
    S, n, m = 5, 10, 6
    grads = [(10.0 ** s) * (g.standard_normal((n, 1)) @ g.standard_normal((1, m)) + 0.3 * g.standard_normal((n, m)))
             for s in range(S)]
    layers = sparsegrad_mlp(model, density=0.2, grads={"0.intermediate.dense": grads, "0.output.dense": [G.T for G in grads]})
    lay = layers["0.intermediate.dense"]
    A = sum(0.85 ** (S - 1 - s) * G @ G.T / np.sum(G * G) for s, G in enumerate(grads))
    B = sum(0.85 ** (S - 1 - s) * G.T @ G / np.sum(G * G) for s, G in enumerate(grads))
    U = np.linalg.eigh(A)[1][:, ::-1]
    V = np.linalg.eigh(B)[1][:, ::-1]
    score = sum(0.97 ** (S - 1 - s) * (U.T @ G @ V) ** 2 / np.sum(G * G) for s, G in enumerate(grads))
    k = round(0.2 * n * m)
    want = np.sort(np.argsort(-score.ravel(), kind="stable")[:k])
    np.testing.assert_array_equal(np.sort(np.asarray(lay.indices)), want)
    plain = sum((U.T @ G @ V) ** 2 for G in grads)  # the old rule picks another set here
    assert not np.array_equal(np.sort(np.argsort(-plain.ravel(), kind="stable")[:k]), want)
    with pytest.raises(ValueError, match="score_decay"):
        sparsegrad_mlp(nn.Sequential(_Block(6, 10)), grads={"0.intermediate.dense": grads}, score_decay=0.0)
