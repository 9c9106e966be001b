"""lrmath.torch.RandomizedLinear / randomize: exact dX and db, unbiased dW whose variance
matches the closed form, measured saved-activation memory equal to the prediction
(saved_tensors_hooks), seeds, and errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lrmath import randmm as R  # noqa: E402
from lrmath.errors import ShapeError  # noqa: E402
from lrmath.testing import assert_close, assert_z, z_score  # noqa: E402
from lrmath.torch import RandomizedLinear, randomize  # noqa: E402

LAYER_CASES = [
    ("gaussian", {}),
    ("rademacher", {}),
    ("srht", {}),
    ("srdct", {"replace": False}),
    ("crs", {"probs": "x"}),
    ("crs", {"probs": "uniform"}),
    ("crs", {"probs": "uniform", "replace": False}),
    ("wta", {"probs": "x"}),
]
IDS = [f"{k}-{'-'.join(f'{a}={b}' for a, b in o.items())}" for k, o in LAYER_CASES]


def _layer(est, opts, m=6, n=4, ratio=0.5, seed=3, dtype=torch.float64):
    torch.manual_seed(0)
    return RandomizedLinear(m, n, ratio=ratio, estimator=est, seed=seed, dtype=dtype, **opts)


def _saved(fn, params):
    """Bytes saved for backward while ``fn`` runs, split into (activations, parameters)."""
    ids = {p.data_ptr() for p in params}
    acts, pars = [], []

    def pack(t):
        (pars if t.data_ptr() in ids else acts).append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(acts), sum(pars)


@pytest.mark.parametrize("est,opts", LAYER_CASES, ids=IDS)
def test_exact_input_and_bias_gradients(est, opts):
    lin = _layer(est, opts)
    ref = torch.nn.Linear(6, 4, dtype=torch.float64)
    ref.load_state_dict(lin.state_dict())
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(3, 7, 4, dtype=torch.float64)
    y1, y2 = lin(x1), ref(x2)
    assert_close(y1.detach(), y2.detach(), n=6)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    # independent oracle for dX and db: dense formulas
    assert_close(x1.grad, g @ lin.weight.detach(), n=4)
    assert_close(lin.bias.grad, g.reshape(-1, 4).sum(0), n=21)
    assert_close(x1.grad, x2.grad, n=4)
    assert lin.weight.grad.shape == (4, 6)


@pytest.mark.parametrize("est,opts", LAYER_CASES, ids=IDS)
def test_saved_memory_measured_equals_prediction(est, opts):
    m, n, t = 32, 8, 40
    lin = _layer(est, opts, m=m, n=n, ratio=0.25, dtype=torch.float32)
    ref = torch.nn.Linear(m, n)
    x = torch.randn(t, m, requires_grad=True)
    y, acts, pars = _saved(lambda: lin(x), [lin.weight, lin.bias])
    y.sum().backward()
    _, acts_ref, _ = _saved(lambda: ref(x), [ref.weight, ref.bias])
    assert acts_ref == t * m * 4  # nn.Linear keeps X
    assert acts == lin.saved_bytes(t)
    k = lin.sketch_size(t)
    assert k == 10
    extra = 0 if est in ("gaussian", "rademacher", "srht", "srdct") or opts.get("probs") == "uniform" else 8 * k
    assert acts == k * m * 4 + extra
    assert abs(acts / acts_ref - k / t) <= 0.01 * k / t + extra / acts_ref


@pytest.mark.parametrize(
    "est,opts,vopts",
    [
        ("crs", {"probs": "x"}, {"probs": "x"}),
        ("srht", {}, {}),
        ("rademacher", {}, {}),
        ("crs", {"probs": "uniform", "replace": False}, {"probs": "uniform", "replace": False}),
    ],
)
def test_weight_gradient_unbiased_with_formula_variance(est, opts, vopts):
    t, m, n, trials = 12, 5, 3, 300
    rs = np.random.default_rng(1)
    Xn = rs.standard_normal((t, m)) * np.exp(rs.standard_normal((t, 1)))
    Gn = rs.standard_normal((t, n))
    lin = _layer(est, opts, m=m, n=n, ratio=4 / 12, seed=11)
    X = torch.from_numpy(Xn)
    G = torch.from_numpy(Gn)
    exact = Gn.T @ Xn  # (out, in)
    samples = []
    for _ in range(trials):  # every forward draws a new stream
        lin.weight.grad = None
        (lin(X) * G).sum().backward()
        samples.append(lin.weight.grad.numpy().copy())
    S = np.stack(samples)
    se = S.std(0, ddof=1) / np.sqrt(trials)
    fam = 4 * (n * m + 1)
    for idx in np.ndindex(n, m):
        assert_z(z_score(S[(slice(None),) + idx].mean(), exact[idx], se[idx]), family=fam, what=f"{est} dW{idx}")
    sq = ((S - exact) ** 2).sum(axis=(1, 2))
    formula = R.variance(Xn, Gn, 4, est, **vopts)
    assert_z(z_score(sq.mean(), formula, sq.std(ddof=1) / np.sqrt(trials)), family=fam, what=f"{est} Var {sq.mean():.4g} vs {formula:.4g}")


def test_full_ratio_without_replacement_is_exact():
    lin = _layer("crs", {"probs": "uniform", "replace": False}, ratio=1.0)
    ref = torch.nn.Linear(6, 4, dtype=torch.float64)
    ref.load_state_dict(lin.state_dict())
    x = torch.randn(9, 6, dtype=torch.float64)
    lin(x).pow(2).sum().backward()
    ref(x).pow(2).sum().backward()
    assert_close(lin.weight.grad, ref.weight.grad, n=9)


def test_seeds_reproduce():
    x = torch.randn(20, 6, dtype=torch.float64)
    grads = []
    for _ in range(2):
        lin = _layer("gaussian", {}, seed=5)
        for _ in range(2):
            lin.weight.grad = None
            lin(x).sum().backward()
            grads.append(lin.weight.grad.clone())
    assert torch.equal(grads[0], grads[2]) and torch.equal(grads[1], grads[3])
    assert not torch.equal(grads[0], grads[1])  # a new stream per forward


def test_no_grad_and_eval_path_is_plain_linear():
    lin = _layer("srht", {})
    x = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad():
        y = lin(x)
    assert_close(y, x @ lin.weight.T + lin.bias, n=6)
    assert lin.calls == 0


def test_errors():
    with pytest.raises(ValueError, match="at least 1"):
        RandomizedLinear(4, 3, k=0)
    with pytest.raises(ValueError, match="ratio"):
        RandomizedLinear(4, 3, ratio=1.5)
    with pytest.raises(ValueError, match="ratio"):
        RandomizedLinear(4, 3, ratio=0.0)
    with pytest.raises(ValueError, match="only 'x' or 'uniform'"):
        RandomizedLinear(4, 3, probs="xy")
    with pytest.raises(ValueError, match="not available"):
        RandomizedLinear(4, 3, estimator="bernoulli")
    lin = RandomizedLinear(4, 3, k=10)
    with pytest.raises(ValueError, match="exceeds"):
        lin(torch.randn(6, 4))
    with pytest.raises(ShapeError, match=r"\(\.\.\., 4\)"):
        RandomizedLinear(4, 3)(torch.randn(6, 5))


def test_randomize_model_memory_and_outputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    x = torch.randn(4, 10, 16)
    y_ref = model(x).detach()
    params = list(model.parameters())
    _, acts_ref, _ = _saved(lambda: model(x), params)
    randomize(model, ratio=0.25, estimator="crs", exclude=None)
    assert all(isinstance(model[i], RandomizedLinear) for i in (0, 2))
    assert model[0].weight is params[0]  # shared, not copied
    assert "ratio=0.25" in repr(model)
    y, acts, _ = _saved(lambda: model(x), params)
    assert_close(y.detach(), y_ref, n=32)
    t = 40
    # Tanh keeps its output (t, 32); each linear keeps its sketch instead of its input
    assert acts_ref == t * 16 * 4 + t * 32 * 4 + t * 32 * 4
    assert acts == t * 32 * 4 + model[0].saved_bytes(t) + model[2].saved_bytes(t)
    y.sum().backward()
    assert model[0].weight.grad is not None
    m2 = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    randomize(m2, include=["1"])
    assert isinstance(m2[1], RandomizedLinear) and type(m2[0]) is torch.nn.Linear


def test_pair_ids_follow_capture_row_order():
    from lrmath.randmm._cli import pair_ids

    same = {"attention_mask_a": torch.tensor([[1, 1, 0], [1, 0, 0]]), "attention_mask_b": torch.tensor([[1, 0, 0], [1, 1, 1]])}
    assert pair_ids(same).tolist() == [0, 0, 1, 0, 1, 1, 1]
    diff = {"attention_mask_a": torch.tensor([[1, 1], [1, 0]]), "attention_mask_b": torch.tensor([[1, 0, 0], [1, 1, 1]])}
    assert pair_ids(diff).tolist() == [0, 0, 1, 0, 1, 1, 1]


def test_cli_on_the_default_model(capsys):
    pytest.importorskip("tokenizers")
    from lrmath import cli

    try:
        from lrmath import data

        data.model_dir()
    except Exception as exc:  # noqa: BLE001 - the demo extra is optional
        pytest.skip(f"default model unavailable: {exc}")
    rc = cli.main(["--json", "randmm", "--pairs", "2", "--ratio", "0.5", "--layer", "encoder.layer.1.attention.self.query", "--per-layer"])
    import json

    out = json.loads(capsys.readouterr().out)
    assert rc in (0, None)
    rows = out["rows"]
    t = rows[0]["t"]
    k = rows[0]["k"]
    assert k == round(0.5 * t) and all(r["vs_sgd"] > 0 for r in rows)
    by = {r["estimator"]: r for r in rows}
    assert by["gaussian"]["saved_bytes"] == (t - k) * 384 * 4
    assert by["crs(probs=x)"]["saved_bytes"] == (t - k) * 384 * 4 - 8 * k
    # the optimal standalone probabilities never lose to the layer's ||x|| proxy
    assert by["crs(probs=xy)"]["var_sketch"] <= by["crs(probs=x)"]["var_sketch"]
