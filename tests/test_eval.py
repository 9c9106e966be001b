"""lrmath.eval on tiny random transformers models: perplexity against an NLL computed here,
Spearman against scipy, quantize_linears against the quantizers called directly, and the CLI."""

from __future__ import annotations

import importlib
import json
import math
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ev = importlib.import_module("lrmath.eval")  # lrmath._LAZY gains "eval" with the merge

from lrmath.errors import EmptyInputError, ShapeError  # noqa: E402

from . import torch_models  # noqa: E402


def _tiny_llama(vocab=61, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    return transformers.LlamaForCausalLM(cfg).eval()


def _nll_oracle(model, ids, window):
    """Non-overlapping windows; NLL of positions 1..w-1 of each window, float64 log-softmax."""
    total, count = 0.0, 0
    for b in range(0, len(ids), window):
        w = ids[b : b + window]
        if len(w) < 2:
            continue
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(w)[None]).logits[0].double().numpy()
        for p in range(1, len(w)):
            row = logits[p - 1]
            logz = row.max() + math.log(np.exp(row - row.max()).sum())
            total += logz - row[w[p]]
            count += 1
    return total / count, count


@pytest.mark.parametrize("n", [96, 100])
def test_perplexity_matches_independent_nll(n):
    model = _tiny_llama()
    ids = np.random.default_rng(1).integers(0, 61, n)
    res = ev.perplexity(model, ids, window=32, max_tokens=None)
    nll, count = _nll_oracle(model, ids.tolist(), 32)
    assert res.tokens == count == n - res.windows
    assert res.windows == math.ceil(n / 32) and res.text_tokens == n
    tol = 64 * np.finfo(np.float32).eps * max(1.0, nll)  # float32 logits, sums of <= 128 terms
    assert abs(res.nll - nll) <= tol and math.isclose(float(res), math.exp(res.nll))
    # max_tokens cuts the text first
    cut = ev.perplexity(model, ids, window=32, max_tokens=64)
    assert cut.text_tokens == 64 and abs(cut.nll - _nll_oracle(model, ids[:64].tolist(), 32)[0]) <= tol


def test_overlapping_windows_score_every_token_once():
    model = _tiny_llama()
    ids = np.random.default_rng(2).integers(0, 61, 80)
    res = ev.perplexity(model, torch.tensor(ids), window=32, stride=16, max_tokens=None)
    assert res.tokens == 79  # every token after the first
    # one window covering the whole text scores the same tokens with full context
    whole = ev.perplexity(model, ids, window=80, max_tokens=None)
    assert whole.tokens == 79 and whole.windows == 1
    assert abs(whole.nll - _nll_oracle(model, ids.tolist(), 80)[0]) <= 64 * np.finfo(np.float32).eps * whole.nll


def test_perplexity_errors():
    model = _tiny_llama()
    with pytest.raises(ShapeError, match="fewer than one window of 512"):
        ev.perplexity(model, np.arange(100) % 61)
    with pytest.raises(ValueError, match="stride"):
        ev.perplexity(model, np.arange(100) % 61, window=32, stride=33)
    with pytest.raises(TypeError, match="tokenizer"):
        ev.perplexity(model, "some text")
    with pytest.raises(ShapeError, match="1-D integer"):
        ev.perplexity(model, np.zeros((2, 40)), window=8)


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    for n in (2, 5, 50, 400):
        a = rng.integers(0, 6, n).astype(float)  # many ties
        b = a + rng.normal(size=n)
        assert math.isclose(ev.spearman(a, b), spearmanr(a, b).statistic, rel_tol=1e-12, abs_tol=1e-12)
    with pytest.raises(EmptyInputError):
        ev.spearman([1.0], [2.0])


def test_sts_spearman_matches_scipy_on_a_tiny_bert():
    from scipy.stats import spearmanr

    from lrmath import data

    tok = transformers.AutoTokenizer.from_pretrained(str(data.model_dir()), local_files_only=True)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32)
    model = transformers.BertModel(cfg).eval()
    pairs = [(a, b, s) for a, b, s in [("a cat sat", "a cat sits on the mat", 4.0), ("rain today", "sunny day", 1.0),
                                      ("he runs", "he is running fast", 3.5), ("red car", "blue sky above", 0.5),
                                      ("we eat bread", "bread is eaten", 3.0), ("old song", "a new film", 1.5)]]
    got = ev.sts_spearman(model, tok, pairs, batch_size=5)
    # independent: each sentence alone (no padding), mean of its token states
    embs = []
    with torch.no_grad():
        for s in [a for a, _, _ in pairs] + [b for _, b, _ in pairs]:
            enc = tok(s, return_tensors="pt")
            embs.append(model(**enc).last_hidden_state[0].mean(0).double().numpy())
    e = np.array(embs)
    u, v = e[:6], e[6:]
    cos = (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
    assert math.isclose(got, 100 * spearmanr(cos, [s for *_, s in pairs]).statistic, abs_tol=1e-9)


def test_quantize_linears_rtn_equals_direct_and_skips_embeddings():
    from lrmath.kashin.baselines import rtn_quantize

    model = _tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rep = ev.quantize_linears(model, "rtn", bits=2, group=64)
    names = [n for n, _ in ev.block_linears(model)]
    assert rep.layers == len(names) == 14 and all(".layers." in n for n in names)
    for n, p in model.named_parameters():
        if any(n == f"{m}.weight" for m in names):
            W = before[n].numpy()
            np.testing.assert_array_equal(p.detach().numpy(), rtn_quantize(W, 2, 64).dequantize())
        else:  # embeddings, norms and the LM head are untouched
            assert torch.equal(p, before[n]), n
    W_all = sum(before[f"{m}.weight"].numel() for m in names)
    assert rep.weights == W_all
    # 2-bit codes + one float16 scale and zero per 64 weights (each matrix here is a multiple of 64)
    assert rep.bytes == sum(-(-before[f"{m}.weight"].numel() * 2 // 8) + 4 * before[f"{m}.weight"].numel() // 64
                            for m in names)
    assert math.isclose(rep.bits_per_weight, 2.5)
    errs = [np.linalg.norm(model.get_submodule(m).weight.detach().numpy() - before[f"{m}.weight"].numpy())
            / np.linalg.norm(before[f"{m}.weight"].numpy()) for m in names]
    assert math.isclose(rep.weight_error, float(np.mean(errs)), rel_tol=1e-6)


def test_quantize_linears_kashin_packed_equals_dense_and_hqq_bytes():
    import copy

    from lrmath.torch.kashin import KashinLinear

    model = _tiny_llama(vocab=64)
    dense, packed = copy.deepcopy(model), copy.deepcopy(model)
    r1 = ev.quantize_linears(dense, "kashin", bits=3, block=16)
    r2 = ev.quantize_linears(packed, "kashin", bits=3, block=16, packed=True)
    assert sum(isinstance(m, KashinLinear) for m in packed.modules()) == 14
    assert r1.bytes == r2.bytes and r1.bits_per_weight > 3
    ids = torch.tensor(np.random.default_rng(4).integers(0, 64, (1, 20)))
    with torch.no_grad():
        a, b = dense(input_ids=ids).logits, packed(input_ids=ids).logits
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4 * float(a.abs().max()))
    pytest.importorskip("hqq")
    h = ev.quantize_linears(copy.deepcopy(model), "hqq", bits=4, group=64)
    assert math.isclose(h.bits_per_weight, 4.5) and 0 < h.weight_error < 0.2


def test_quantize_linears_errors():
    with pytest.raises(EmptyInputError, match="no nn.Linear inside numbered transformer blocks"):
        ev.quantize_linears(torch.nn.Sequential(torch.nn.Linear(4, 4)), "rtn")
    with pytest.raises(ValueError, match="unknown quantizer"):
        ev.quantize_linears(_tiny_llama(), "gptq")
    with pytest.raises(ValueError, match="packed"):
        ev.quantize_linears(_tiny_llama(), "rtn", packed=True)


def _model_folder(path):
    """A tiny Llama saved with the default model's (BERT word-piece) tokenizer: a local LM folder."""
    from lrmath import data

    _tiny_llama(vocab=30522).save_pretrained(str(path))
    transformers.AutoTokenizer.from_pretrained(str(data.model_dir()), local_files_only=True).save_pretrained(str(path))


def test_cli_ppl_on_a_local_model_folder(tmp_path, capsys):
    """`lrmath eval ppl --model FOLDER`: a text shorter than one window is a clear error; a run gives JSON."""
    from lrmath.cli import main

    _model_folder(tmp_path / "m")
    (tmp_path / "short.txt").write_text("only a few words here")
    (tmp_path / "long.txt").write_text(" ".join(["the quick brown fox jumps over the lazy dog"] * 20))
    base = ["--json", "eval", "ppl", "--model", str(tmp_path / "m"), "--window", "32"]
    assert main(base + ["--text", str(tmp_path / "short.txt")]) == 1
    err = capsys.readouterr().err
    assert "fewer than one window of 32" in err and "Traceback" not in err
    assert main(base + ["--text", str(tmp_path / "nope.txt")]) == 2
    assert "neither 'lee-news' nor a file" in capsys.readouterr().err
    assert main(base + ["--text", str(tmp_path / "long.txt"), "--quantizer", "rtn", "--bits", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    row = out["rows"][-1]
    assert row["method"] == "RTN g64" and row["bits"] == 3 and math.isclose(row["bpw"], 3.5)
    assert row["tokens"] == out["perplexity"]["tokens"] > 0 and row["ppl"] > 1
    assert out["quantization"]["layers"] == 14


def test_cli_eval_has_no_model_without_linears_path(capsys):
    from lrmath.cli import main

    assert main(["eval", "sts", "--model", "no-such-model"]) == 2
    assert "neither 'minilm' nor a BERT model folder" in capsys.readouterr().err


def test_calibrated_kashin_report_and_distillation():
    """bpw, weight errors and the dense reconstructions checked against the packed layers; the
    distilled norms + scales lower the KL to the float model (same codes)."""
    import copy

    from lrmath.torch.kashin import KashinLinear

    fp = _tiny_llama(seed=1)
    with torch.no_grad():  # a random init predicts nearly uniform tokens: sharpen it so the KL is not ~0
        fp.lm_head.weight.mul_(20.0)
    g = np.random.default_rng(0)
    ids = g.integers(0, 61, 200)
    wins = [torch.as_tensor(ids[i:i + 16])[None] for i in range(0, 192, 16)]
    packed = copy.deepcopy(fp)
    rep = ev.calibrated_kashin(packed, 3, ids, windows=4, window=16, packed=True, progress_bar=False)
    layers = {n: m for n, m in packed.named_modules() if isinstance(m, KashinLinear)}
    assert sorted(layers) == sorted(n for n, _ in ev.block_linears(fp)) and rep.layers == 14
    nbytes = sum(sum(getattr(m, t).numel() * getattr(m, t).element_size()
                     for t in ("codes_u", "codes_v", "scale_u", "scale_v", "table_u", "table_v"))
                 for m in layers.values())
    assert rep.bytes == nbytes and math.isclose(rep.bits_per_weight, 8 * nbytes / rep.weights)
    orig = dict(fp.named_modules())
    errs = [float(torch.linalg.norm(orig[n].weight.detach() - m.dequantize()) / torch.linalg.norm(orig[n].weight.detach()))
            for n, m in layers.items()]
    assert math.isclose(rep.weight_error, float(np.mean(errs)), rel_tol=1e-5)
    assert rep.calibration["windows"] == 4 and rep.calibration["tokens"] == 64 and rep.label == "Kashin calibrated"
    dense = copy.deepcopy(fp)
    rep_d = ev.calibrated_kashin(dense, 3, ids, windows=4, window=16, progress_bar=False)
    assert not any(isinstance(m, KashinLinear) for m in dense.modules())
    x = torch.as_tensor(ids[:32])[None]
    torch.testing.assert_close(dense(input_ids=x).logits, packed(input_ids=x).logits, rtol=1e-4, atol=1e-4)
    assert rep_d.bits_per_weight == rep.bits_per_weight
    tuned = copy.deepcopy(fp)
    rep_t = ev.calibrated_kashin(tuned, 3, ids, windows=4, window=16, distill_steps=40, distill_lr=3e-3,
                                 distill_window=16, progress_bar=False)
    assert rep_t.label == "Kashin calibrated + distilled norm/scales"
    assert rep_t.calibration["distill_windows"] == 12 and rep_t.bits_per_weight == rep.bits_per_weight
    k0, k1 = torch_models.kl_by_hand(dense, fp, wins), torch_models.kl_by_hand(tuned, fp, wins)
    assert k1 < 0.9 * k0, (k0, k1)  # 0.55 measured
    with pytest.raises(ShapeError, match="fewer than one window"):
        ev.calibrated_kashin(copy.deepcopy(fp), 3, ids[:10], window=16)
    with pytest.raises(ValueError, match="distill_params"):
        ev.calibrated_kashin(copy.deepcopy(fp), 3, ids, window=16, distill_steps=1, distill_params=("weights",))


def test_cli_ppl_calibrated_kashin(tmp_path, capsys):
    from lrmath.cli import main

    _model_folder(tmp_path / "m")
    (tmp_path / "eval.txt").write_text(" ".join(["the quick brown fox jumps over the lazy dog"] * 20))
    (tmp_path / "cal.txt").write_text(" ".join(["a slow red hen walks under the busy bridge"] * 20))
    base = ["--json", "eval", "ppl", "--model", str(tmp_path / "m"), "--window", "32", "--text", str(tmp_path / "eval.txt")]
    assert main(base + ["--quantizer", "kashin", "--bits", "3", "--calibration", str(tmp_path / "cal.txt"),
                        "--cal-windows", "2", "--distill-steps", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    row = out["rows"][-1]
    assert row["method"] == "Kashin calibrated + distilled norm/scales" and row["bits"] == 3 and row["bpw"] > 3
    assert out["quantization"]["calibration"]["windows"] == 2 and out["quantization"]["layers"] == 14
    assert out["quantization"]["calibration"]["gptq"] == "uv"
    assert main(base + ["--quantizer", "kashin", "--bits", "2", "--calibration", str(tmp_path / "cal.txt"),
                        "--cal-windows", "1", "--gptq", "u"]) == 0
    assert json.loads(capsys.readouterr().out)["quantization"]["calibration"]["gptq"] == "u"
    for extra, msg in ((["--quantizer", "kashin", "--calibration", str(tmp_path / "cal.txt"), "--gptq", "v"], "invalid choice"),
                       (["--quantizer", "rtn", "--calibration", str(tmp_path / "cal.txt")], "needs --quantizer kashin"),
                       (["--quantizer", "kashin", "--distill-steps", "3"], "need --calibration"),
                       (["--quantizer", "kashin", "--calibration", str(tmp_path / "none.txt")], "neither 'lee-news' nor a file")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err
    assert main(base + ["--quantizer", "kashin", "--calibration", str(tmp_path / "cal.txt"), "--distill-steps", "2",
                        "--distill-params", "weights"]) != 0
    err = capsys.readouterr().err
    assert "distill_params" in err and "Traceback" not in err
