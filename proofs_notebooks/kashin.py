# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Kashin quantization: flat factors, peaked histograms, and 2 bits per weight
#
# Merkulov et al. (arXiv 2404.09737) write each block $x\in\mathbb R^N$ of a weight matrix in the
# overcomplete frame $[I, Q]$ ($Q$ orthogonal) as
#
# $$x = u + Q v,\qquad \max(\|u\|_\infty, \|v\|_\infty) \le K\,\|x\|_2/\sqrt N \qquad (1)$$
#
# with a constant $K$ of order one (Kashin's representation). Outliers are spread over $2N$
# coefficients, the entries of $u$ and $v$ cluster at a few values, and coding them with a few
# centroids loses little. This notebook measures, on random blocks and on the default model
# (all-MiniLM-L6-v2):
#
# 1. eq. (1) holds exactly (checked against a Hadamard matrix built here from Sylvester's
#    construction), and the achieved $K$ versus $N$, the choice of $Q$ and the algorithm;
# 2. the convergence of the truncation and greedy iterations;
# 3. the histograms of $u$ and $v$ (the peaks);
# 4. relative error versus bits, Kashin versus round-to-nearest (RTN), on real weights, with bits
#    per weight counted from the bytes of the saved file;
# 5. the effect on the model's sentence embeddings.

# %%
import os
import tempfile
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import scipy.linalg

from lrmath import data, ops, rng
from lrmath.kashin import decompose, load, quantize, rtn_quantize

SCALE = os.environ.get("LRMATH_SCALE", "ci")
FIG = tempfile.mkdtemp(prefix="kashin-figs-")
T0 = time.perf_counter()
print("scale:", SCALE, "| figures in", FIG)


def hadamard_dense(n, seed):
    """Randomized Hadamard written out: Sylvester H_n / sqrt(n), columns signed by the seeded stream."""
    return scipy.linalg.hadamard(n) / np.sqrt(n) * rng.signs(seed, ops.STREAM_SIGNS, n)[None, :]


# %% [markdown]
# ## 1. Eq. (1) exactly, and the Kashin constant
# The decomposition returns $u, v$; we rebuild $x$ with the independently written dense $Q$.

# %%
g = np.random.default_rng(0)
x = g.standard_t(3, size=(200, 256))
u, v, rep = decompose(x, ops.orthogonal("hadamard", 256, seed=1))
Qd = hadamard_dense(256, 1)
err = np.abs(u + v @ Qd.T - x).max() / np.abs(x).max()
K = np.maximum(np.abs(u).max(1), np.abs(v).max(1)) * 16 / np.linalg.norm(x, axis=1)
print(rep)
print(f"max |u + Q v - x| / max |x| = {err:.2e};  K recomputed: max {K.max():.3f}")
assert err < 1e-12
assert np.allclose(K, rep.K)
assert K.max() <= 2.0  # the bound fixed in advance (decisions.md)

# %% [markdown]
# **K versus N, the choice of Q, and the algorithm** (Student-t blocks, heavy tails; and blocks of
# the real weights). The identity frame $[I, I]$ cannot spread an outlier: there $K$ grows like
# the block's peak-to-RMS ratio, which is what eq. (1) is meant to avoid.

# %%
W_all = data.load_weights([f"{n}.weight" for n, _ in data.linear_layers() if n.startswith("encoder.")])
real = np.concatenate([w.reshape(-1, 256) for w in list(W_all.values())[:6]])[::7].astype(np.float64)
rows = []
Ns = (64, 256, 1024) if SCALE == "ci" else (32, 64, 128, 256, 512, 1024, 2048)
for n in Ns:
    xb = np.random.default_rng(n).standard_t(3, size=(max((4000 if SCALE == "ci" else 40000) // n, 4), n))
    for kind in ("hadamard", "rdct", "haar", "butterfly", "identity"):
        if kind == "haar" and n > 1024:
            continue
        for method in ("truncation", "greedy"):
            cap = 60 if method == "truncation" else (200 if SCALE == "ci" else 600)
            r = decompose(xb, kind, method=method, seed=3, iters=cap).report
            rows.append((n, kind, method, r.K_mean, r.K_max, r.iterations, r.converged))
print(f"{'N':>5} {'Q':>10} {'method':>11} {'K mean':>7} {'K max':>7} {'iters':>6} conv")
for r in rows:
    print(f"{r[0]:>5} {r[1]:>10} {r[2]:>11} {r[3]:7.3f} {r[4]:7.3f} {r[5]:6d} {r[6]}")
for method in ("truncation", "greedy"):
    rr = decompose(real, "hadamard", method=method).report
    print(f"real MiniLM blocks, N=256, hadamard, {method}: K mean {rr.K_mean:.3f}, max {rr.K_max:.3f}")
tr = [r for r in rows if r[1] != "identity" and r[2] == "truncation"]
ident = [r for r in rows if r[1] == "identity"]
assert max(r[4] for r in tr) < min(r[4] for r in ident)  # a real rotation beats the trivial frame

# %% [markdown]
# Measured: with a randomized Hadamard/DCT/Haar/butterfly $Q$ the truncation split reaches
# $K\approx1$, nearly independent of $N$; the paper's greedy pursuit converges too (Kashin and
# Romskii) but to a looser representation ($K\approx1.4$–$1.8$). The identity frame fails, as expected.
#
# ## 2. Convergence

# %%
xb = real[:400]
fig, ax = plt.subplots(figsize=(6, 3.5))
for kind in ("hadamard", "rdct", "haar"):
    for method, ls in (("truncation", "-"), ("greedy", "--")):
        r = decompose(xb, kind, method=method, tol=1e-8, iters=80 if method == "truncation" else 800).report
        ax.semilogy(np.arange(len(r.residual)), r.residual, ls, label=f"{kind}, {method}")
        if method == "truncation":
            rate = (r.residual[-1] / r.residual[1]) ** (1 / max(len(r.residual) - 2, 1))
            print(f"{kind:>9} truncation: {r.iterations} iterations to 1e-8, mean rate {rate:.3f} per iteration")
ax.set_xscale("symlog")
ax.set_xlabel("iteration")
ax.set_ylabel("max relative residual")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(os.path.join(FIG, "convergence.png"), dpi=80)
plt.show()

# %% [markdown]
# The truncation residual falls geometrically (Lyubarskii–Vershynin); one greedy iteration is a
# single $u$- or $v$-step, so it needs many more of them.
#
# ## 3. Histograms of u and v

# %%
W = W_all["encoder.layer.0.intermediate.dense.weight"].astype(np.float64)
blocks = W.reshape(-1, 256)
nrm = np.linalg.norm(blocks, axis=1, keepdims=True) / 16  # RMS per block
fig, axs = plt.subplots(1, 3, figsize=(10, 3))
axs[0].hist((blocks / nrm).ravel(), bins=200, color="gray")
axs[0].set_title("x / rms(x)")
kurt = lambda a: float(np.mean(a**4) / np.mean(a**2) ** 2)  # noqa: E731
stats = {"x": kurt(blocks / nrm)}
for ax, method in zip(axs[1:], ("truncation", "greedy")):
    d = decompose(blocks, "hadamard", method=method, clip=0.25 if method == "truncation" else 1.0, iters=40)
    uu, vv = (d.u / nrm).ravel(), (d.v / nrm).ravel()
    ax.hist(uu, bins=200, alpha=0.6, label="u")
    ax.hist(vv, bins=200, alpha=0.6, label="v")
    ax.set_title(f"{method} split")
    ax.legend()
    stats[f"u ({method})"] = kurt(uu)
    stats[f"v ({method})"] = kurt(vv)
fig.tight_layout()
fig.savefig(os.path.join(FIG, "histograms.png"), dpi=80)
plt.show()
print("kurtosis E[z^4]/E[z^2]^2 (two peaks +-a: 1.0, uniform: 1.8, Gaussian: 3.0):",
      {k: round(v, 2) for k, v in stats.items()})
assert stats["u (truncation)"] < stats["x"]  # the split flattens the distribution towards two peaks

# %% [markdown]
# The weights are slightly heavy-tailed (kurtosis above 3). A low-level truncation split (level
# $0.25\cdot$RMS, the quantizer's default) clips most of $u$ to two peaks $\pm\lambda$ (kurtosis
# near 1.5, between two spikes and a uniform law), so a sign code loses little there. The greedy
# split's factors stay much closer to Gaussian (kurtosis ~2.4–2.9 here), which is one reason the
# paper's variant codes worse at one bit per factor.
#
# ## 4. Error versus bits on real weights
# Bits per weight are counted from the bytes of the tensors in the saved file (codes, fp16 scales,
# fp32 tables). The Gaussian rate–distortion bound $D(R) = \sigma^2 2^{-2R}$ says no quantizer can
# reach a relative error below $2^{-R}$ on Gaussian data; real weights are close to Gaussian after
# the rotation, so the measured errors should sit above that line.

# %%
from safetensors.numpy import load_file

names = ["encoder.layer.0.attention.self.query.weight", "encoder.layer.3.intermediate.dense.weight"]
if SCALE != "ci":
    names = list(W_all)
bits_list = (2, 3, 4) if SCALE == "ci" else (2, 3, 4, 5, 6)
res = {}
tmp = tempfile.mkdtemp()
for name in names:
    Wn = W_all[name].astype(np.float32)
    for b in bits_list:
        q = quantize(Wn, b, iters=10 if b == 2 else 4)
        path = os.path.join(tmp, "q.safetensors")
        q.save(path)
        nbytes = sum(a.nbytes for a in load_file(path).values())
        Wh = load(path).dequantize(np.float64)
        e = np.linalg.norm(Wh - Wn) / np.linalg.norm(Wn)
        r256, r64 = rtn_quantize(Wn, b, 256), rtn_quantize(Wn, b, 64)
        e256 = np.linalg.norm(r256.dequantize(np.float64) - Wn) / np.linalg.norm(Wn)
        e64 = np.linalg.norm(r64.dequantize(np.float64) - Wn) / np.linalg.norm(Wn)
        res[(name, b)] = (8 * nbytes / Wn.size, e, b + 32 / 256, e256, b + 32 / 64, e64)
print(f"{'matrix':<46} bits  Kashin bpw/err    RTN g256 bpw/err   RTN g64 bpw/err   2^-bpw")
for (name, b), (kb, ke, rb, re, r6b, r6e) in res.items():
    print(f"{name:<46} {b:>4}  {kb:.3f} {ke:.4f}    {rb:.3f} {re:.4f}    {r6b:.3f} {r6e:.4f}    {2.0 ** -kb:.4f}")
    assert ke > 2.0 ** -kb * 0.9  # no miracle below the Gaussian rate-distortion line (10% slack: not Gaussian)
for name in names:
    kb, ke, _, re, _, r6e = res[(name, 2)]
    assert abs(kb - 2.125) < 0.01 and ke < re and ke < r6e  # the 2-bit target, measured here

fig, ax = plt.subplots(figsize=(5, 3.5))
for lab, i, j in (("Kashin", 0, 1), ("RTN g256", 2, 3), ("RTN g64", 4, 5)):
    ax.semilogy([np.mean([res[(n, b)][i] for n in names]) for b in bits_list],
                [np.mean([res[(n, b)][j] for n in names]) for b in bits_list], "o-", label=lab)
bb = np.linspace(2, max(bits_list) + 0.5, 20)
ax.semilogy(bb, 2.0**-bb, "k:", label="Gaussian R(D) bound")
ax.set_xlabel("bits per weight (all overhead included)")
ax.set_ylabel("relative Frobenius error")
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(FIG, "error_vs_bits.png"), dpi=80)
plt.show()

# %% [markdown]
# Measured: at 2 bits the default recipe (truncation split, error feedback, least-squares scales,
# alternating sweeps) has about 0.30 relative error at 2.125 bpw, against ~0.55–0.6 for RTN at the
# same bpw and ~0.46 for RTN with groups of 64 (2.5 bpw); at 3 bits it still leads. At 4 bits it is
# about level with RTN at matched bpw (groups of 256) and behind RTN with groups of 64 (4.5 bpw),
# and with more bits (``LRMATH_SCALE=full`` goes to 6) per-group RTN pulls ahead: splitting the bits
# over two factors with one per-tensor centroid table each wastes rate once every factor has several
# bits (the frame has 2N coefficients for N weights). The paper's claim of competitive low-bit
# quality holds at 2–3 bits here; we see no advantage from 4 bits on.
#
# ## 5. Effect on the model's embeddings

# %%
import torch

from lrmath.torch.kashin import KashinLinear, quantize_model

sents = ["A man is playing a guitar.", "A woman is slicing an onion.", "The stock market fell sharply today.",
         "Two dogs run across a snowy field.", "He wrote the report in the morning."]
ref = data.encode(sents)
include = ["encoder.layer.0.*", "encoder.layer.5.*"] if SCALE == "ci" else None
model = quantize_model(data.load_model(), 2, include=include)
emb = data.encode(sents, model=model)
cos = np.sum(ref * emb, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(emb, axis=1)
print(f"{len(model.kashin_layers)} linear layers quantized to 2 bits; cosine(before, after):", np.round(cos, 4))

# the same dequantized weights in plain nn.Linear layers: an independent forward path
dense = data.load_model()
with torch.no_grad():
    for n, m in model.named_modules():
        if isinstance(m, KashinLinear):
            dense.get_submodule(n).weight.copy_(torch.from_numpy(m.to_quantized().dequantize()))
emb_dense = data.encode(sents, model=dense)
print("max |KashinLinear forward - dense dequantized forward| =", float(np.abs(emb - emb_dense).max()))
assert np.abs(emb - emb_dense).max() < 1e-4

# RTN at 2.5 bpw on the same layers, for comparison
rtn_model = data.load_model()
with torch.no_grad():
    for n in model.kashin_layers:
        lin = rtn_model.get_submodule(n)
        lin.weight.copy_(torch.from_numpy(rtn_quantize(lin.weight.numpy(), 2, 64).dequantize()))
emb_rtn = data.encode(sents, model=rtn_model)
cos_rtn = np.sum(ref * emb_rtn, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(emb_rtn, axis=1)
print("RTN g64 (2.5 bpw) cosine:", np.round(cos_rtn, 4))
print(f"mean cosine: Kashin 2.125 bpw {cos.mean():.4f}  vs  RTN 2.5 bpw {cos_rtn.mean():.4f}")
print(f"notebook time {time.perf_counter() - T0:.1f} s")
