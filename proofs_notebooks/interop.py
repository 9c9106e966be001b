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
# # Interop: one code path for NumPy, PyTorch and the array API
#
# lrmath writes each algorithm once against `xp = array_namespace(x)`. This notebook checks
# the promises of that layer numerically:
#
# 1. results come back as the caller's kind of array, and NumPy <-> torch (CPU) hand-offs share memory;
# 2. the known DLPack traps (negative strides, read-only memory, bfloat16) are handled;
# 3. the counter-based random generator gives the same bits on every backend, so a file or a
#    sketch needs to store only a seed;
# 4. the shared orthogonal operators equal their textbook dense definitions, built here
#    independently (Sylvester's Hadamard, the DCT-II cosine formula), on every backend.

# %%
import os

import numpy as np
import scipy.linalg
import torch
import array_api_strict as xps

import lrmath
from lrmath import backend, ops, rng

SCALE = os.environ.get("LRMATH_SCALE", "ci")
print("lrmath", lrmath.__version__, "| scale:", SCALE)

# %% [markdown]
# ## 1. Same kind out, zero-copy where the memory allows

# %%
a = np.random.default_rng(0).standard_normal((8, 64))
t = backend.convert(a, "torch")
print("torch tensor shares NumPy's memory:", t.data_ptr() == a.ctypes.data)
assert t.data_ptr() == a.ctypes.data

Q = ops.orthogonal("hadamard", 64, seed=1)
for x in (a, t, xps.asarray(a)):
    y = Q.apply(x)
    print(f"{backend.backend_name(x):>17} in -> {backend.backend_name(y):>17} out")
    assert backend.backend_name(y) == backend.backend_name(x)

# %% [markdown]
# ## 2. The traps
# `torch.from_dlpack` on a negative-stride array aborts the process, and on a read-only NumPy
# array returns a *writable* alias. `convert` copies in exactly those cases.

# %%
rev = np.arange(5.0)[::-1]
print("negative strides:", backend.convert(rev, "torch").tolist())
ro = np.arange(3.0)
ro.setflags(write=False)
tt = backend.convert(ro, "torch")
tt += 10
print("read-only source after writing to the tensor:", ro.tolist())
assert ro.tolist() == [0.0, 1.0, 2.0]

# bfloat16 is a storage type: computed in float32, rounded once at the end
xb = torch.randn(4, 64, dtype=torch.bfloat16)
yb = Q.apply(xb)
ref = (xb.float().numpy() @ Q.matrix().T)  # independent float64 product
err = np.abs(yb.float().numpy() - ref).max() / np.abs(ref).max()
print(f"bf16 result dtype {yb.dtype}, max relative error {err:.2e} (bf16 eps = {2**-7:.2e})")
assert yb.dtype == torch.bfloat16 and err <= 2**-7

# %% [markdown]
# ## 3. Randomness that regenerates identically everywhere
# `bits(seed, stream, i) = mix(key(seed, stream) + (i + 1) * golden)` with the SplitMix64
# finaliser. We re-implement it here with Python integers (an independent oracle) and compare
# with the NumPy, torch and array-API-strict draws.

# %%
M64 = (1 << 64) - 1


def mix(z):
    z &= M64
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & M64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


seed, stream = 2024, 7
key = mix(seed * 0x9E3779B97F4A7C15 + mix(stream + 0xD1B54A32D192ED03))
oracle = [mix(key + (i + 1) * 0x9E3779B97F4A7C15) for i in range(16)]
draws = {
    "numpy": rng.random_bits(seed, stream, 16),
    "torch": rng.random_bits(seed, stream, 16, xp=torch),
    "array_api_strict": rng.random_bits(seed, stream, 16, xp=xps),
}
for name, d in draws.items():
    same = [int(v) for v in backend.to_numpy(d).astype(np.uint64)] == oracle
    print(f"{name:>17}: identical to the oracle: {same}")
    assert same

# %% [markdown]
# ## 4. Operators against their textbook definitions

# %%
n = 64
H = scipy.linalg.hadamard(n) / np.sqrt(n)
D = np.diag(rng.signs(1, ops.STREAM_SIGNS, n))
k, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
C = np.sqrt(2 / n) * np.cos(np.pi * k * (2 * j + 1) / (2 * n))
C[0] /= np.sqrt(2)
checks = {"hadamard": H @ D, "dct": C}
for kind, dense in checks.items():
    op = ops.orthogonal(kind, n, seed=1)
    for x in (a, torch.from_numpy(a), xps.asarray(a)):
        got = backend.to_numpy(op.apply(x))
        err = np.abs(got - a @ dense.T).max()
        print(f"{kind:>8} on {backend.backend_name(x):>17}: max |fast - dense| = {err:.1e}")
        assert err < 1e-12

# %%
print("all interop checks passed")
