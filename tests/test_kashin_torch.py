"""KashinLinear, quantize_model, quantized checkpoints, and the CLI (issue #4)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lrmath.errors import FormatError, ShapeError  # noqa: E402
from lrmath.kashin import load_entries  # noqa: E402
from lrmath.testing import assert_close  # noqa: E402
from lrmath.torch.kashin import KashinLinear, load_quantized, quantize_model, save_quantized  # noqa: E402


@pytest.mark.parametrize("inn,block", [(256, 64), (96, 64)])  # row-aligned blocks and blocks spanning rows
def test_forward_backward_match_dense(inn, block):
    torch.manual_seed(0)
    lin = torch.nn.Linear(inn, 40)
    layer = KashinLinear.from_linear(lin, 3, block=block, iters=2, chunk_rows=7)
    # decoded by the NumPy reference (itself checked against a bit-by-bit decoder in test_kashin.py);
    # FORMAT.md decodes in float32, so the comparison is at float32 tolerance
    Wd = torch.from_numpy(layer.to_quantized().dequantize(np.float64))
    x = torch.randn(2, 5, inn, requires_grad=True)
    y = layer(x)
    ref = (x.detach().double() @ Wd.T + lin.bias.detach().double()).float()
    assert_close(y.detach(), ref, n=inn, depth=4)
    g = torch.randn_like(y)
    y.backward(g)
    assert_close(x.grad, (g.double() @ Wd).float(), n=40, depth=4)
    assert layer.bias.grad is not None and torch.allclose(layer.bias.grad, g.sum((0, 1)).float())


def test_no_dense_weight_saved_or_built():
    """Measured: autograd saves no tensor and no (out, in)-sized tensor is ever allocated in the forward."""
    torch.manual_seed(1)
    out, inn = 64, 256
    layer = KashinLinear.from_linear(torch.nn.Linear(inn, out), 2, block=64, iters=1, chunk_rows=16)
    x = torch.randn(8, inn, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        y = layer(x)
    assert saved == [] or all(int(np.prod(s)) < out * inn for s in saved), saved
    # every tensor the quantized matmul creates is at most chunk_rows x in (plus activations)
    sizes = []
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            r = func(*args, **(kwargs or {}))
            for t in (r if isinstance(r, (tuple, list)) else [r]):
                if isinstance(t, torch.Tensor):
                    sizes.append(t.numel())
            return r

    with Log():
        y = layer(x)
        y.sum().backward()
    assert max(sizes) < out * inn, max(sizes)
    assert max(sizes) >= 16 * inn  # the chunks really are decoded


def test_quantize_model_include_exclude_and_roundtrip(tmp_path):
    torch.manual_seed(2)
    model = torch.nn.ModuleDict({
        "embed_proj": torch.nn.Linear(32, 64),
        "block": torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 64, bias=False)),
        "head": torch.nn.Linear(64, 4),
    })
    ref = copy.deepcopy(model)
    quantize_model(model, 2, block=32, iters=2)
    assert model.kashin_layers == ["block.0", "block.2"]  # embeddings and heads excluded by default
    assert isinstance(model["head"], torch.nn.Linear) and isinstance(model["block"][0], KashinLinear)
    m2 = quantize_model(copy.deepcopy(ref), 2, include=["block.0"], exclude=(), block=32, iters=1)
    assert m2.kashin_layers == ["block.0"]

    def run(m, x):
        h = m["embed_proj"](x)
        return m["head"](m["block"](h))

    x = torch.randn(3, 32)
    p = tmp_path / "model.safetensors"
    save_quantized(model, p)
    assert sorted(load_entries(p)) == ["block.0.weight", "block.2.weight"]
    fresh = load_quantized(copy.deepcopy(ref), p)
    assert fresh.kashin_layers == ["block.0", "block.2"]
    assert torch.equal(run(fresh, x), run(model, x))
    # a quantized model is close to the original (2 bits per weight, relative output error well below 1)
    err = (run(model, x) - run(ref, x)).norm() / run(ref, x).norm()
    assert err < 0.6
    wrong = torch.nn.ModuleDict({"block": torch.nn.Sequential(torch.nn.Linear(64, 32))})
    with pytest.raises(FormatError):
        load_quantized(wrong, p)


def test_layer_errors():
    layer = KashinLinear.from_linear(torch.nn.Linear(16, 8), 2, block=16, iters=1)
    with pytest.raises(ShapeError):
        layer(torch.randn(2, 15))
    assert "bpw=" in repr(layer)


def test_minilm_embeddings_after_quantization():
    from lrmath import data

    try:
        model = data.load_model()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"default model unavailable: {exc}")
    sents = ["A man is playing a guitar.", "The weather is cold today."]
    before = data.encode(sents)
    q = quantize_model(model, 4, include=["encoder.layer.0.*"], iters=2)
    assert len(q.kashin_layers) == 6
    after = data.encode(sents, model=q)
    cos = np.sum(before * after, -1) / np.linalg.norm(before, axis=-1) / np.linalg.norm(after, axis=-1)
    assert np.all(cos > 0.9), cos


# ----------------------------------------------------------------------------- CLI
def _checkpoint(tmp_path, sharded):
    from safetensors.numpy import save_file

    g = np.random.default_rng(0)
    t = {"embeddings.word_embeddings.weight": g.standard_normal((50, 64)).astype(np.float32),
         "encoder.layer.0.dense.weight": g.standard_normal((96, 64)).astype(np.float32),
         "encoder.layer.0.dense.bias": g.standard_normal(96).astype(np.float32),
         "encoder.layer.1.dense.weight": g.standard_normal((64, 96)).astype(np.float32),
         "head.weight": g.standard_normal((3, 64)).astype(np.float32)}
    if not sharded:
        save_file(t, str(tmp_path / "model.safetensors"))
        return tmp_path / "model.safetensors", t
    names = list(t)
    save_file({k: t[k] for k in names[:2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: t[k] for k in names[2:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    wm = {k: f"model-0000{1 if i < 2 else 2}-of-00002.safetensors" for i, k in enumerate(names)}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return tmp_path, t


@pytest.mark.parametrize("sharded", [False, True])
def test_cli_quantize_dequantize(tmp_path, sharded, capsys):
    from safetensors.numpy import load_file

    from lrmath.cli import main

    src, tensors = _checkpoint(tmp_path, sharded)
    out = tmp_path / "q.safetensors"
    assert main(["quantize", str(src), "-o", str(out), "--bits", "3", "--block", "32"]) == 0
    text = capsys.readouterr().out
    assert "encoder.layer.0.dense.weight" in text and "RTN rel. error" in text
    entries = load_entries(out)
    assert sorted(entries) == ["encoder.layer.0.dense.weight", "encoder.layer.1.dense.weight"]
    for k, q in entries.items():
        assert q.relative_error(tensors[k]) < 0.3
    dense = tmp_path / "d.safetensors"
    assert main(["dequantize", str(out), "-o", str(dense)]) == 0
    back = load_file(str(dense))
    assert set(back) == set(tensors)
    for k in tensors:
        if k in entries:
            assert np.array_equal(back[k], entries[k].dequantize())
        else:
            assert np.array_equal(back[k], tensors[k])  # embeddings, heads and biases pass through


def test_cli_errors(tmp_path, capsys):
    from lrmath.cli import main

    src, _ = _checkpoint(tmp_path, False)
    assert main(["quantize", str(src), "-o", str(tmp_path / "x.safetensors"), "--bits", "9"]) == 2  # usage error
    assert "bits" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 40)
    assert main(["dequantize", str(bad), "-o", str(tmp_path / "y.safetensors")]) == 1
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "y.safetensors").exists() and not (tmp_path / "x.safetensors").exists()
