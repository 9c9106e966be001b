"""Numba (``numba.cuda.jit``) versions of every kernel in ``_cuda/*.cu``, argument for argument.

They compile for a GPU or run in the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``). No warp
shuffles are used anywhere (the simulator has none): reductions go through shared memory,
exactly as in the CUDA C++ versions. uint64 arithmetic is written with uint64 constants so
Numba never promotes it to float64; in the simulator it runs on NumPy uint64 scalars,
which wrap modulo 2**64 like the hardware.

Kernels compile on first launch; this module is imported only when the Numba backend runs.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

if not hasattr(np, "row_stack"):  # NumPy >= 2.5 removed it; numba-cuda 0.30 calls it while compiling
    np.row_stack = np.vstack

FWHT_SHARED = 4096
SKETCH_TILE = 16
SKETCH_PAD = SKETCH_TILE + 1  # a module constant: shared-array shapes must be compile-time literals
LOTR_MAXG = 4096
KT = 8  # tokens per block in kashin_matmul
KMAXT = 256
KS_MAXN = 4096
KS_MAXT = 1024

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_G = np.uint64(0x9E3779B97F4A7C15)
_U1 = np.uint64(1)
_S11 = np.uint64(11)
_S27 = np.uint64(27)
_S30 = np.uint64(30)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_S63 = np.uint64(63)


from numba import cuda, float32, int64, uint32  # noqa: E402


dev = cuda.jit(device=True)

# ------------------------------------------------------------------ counter RNG (lrmath.rng)
@dev
def mix64(z):
    z = z ^ (z >> _S30)
    z = z * _M1
    z = z ^ (z >> _S27)
    z = z * _M2
    return z ^ (z >> _S31)

@dev
def bits(key, c):
    return mix64(key + (c + _U1) * _G)

@dev
def uniform(key, c):
    return np.float64(bits(key, c) >> _S11) * 1.1102230246251565e-16

@dev
def sign(key, c):
    return float32(-1.0) if (bits(key, c) >> _S63) else float32(1.0)

@dev
def normal(key, i):
    u1 = 1.0 - uniform(key, np.uint64(2) * i)
    u2 = uniform(key, np.uint64(2) * i + _U1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(6.283185307179586 * u2)

@cuda.jit
def rng_fill(key, offset, n, mode, high, out_f, out_u, out_i):
    k = cuda.grid(1)
    step = cuda.gridsize(1)
    while k < n:
        c = np.uint64(offset + k)
        if mode == 0:
            out_u[k] = bits(key, c)
        elif mode == 1:
            out_f[k] = uniform(key, c)
        elif mode == 2:
            out_f[k] = sign(key, c)
        elif mode == 3:
            out_i[k] = np.int64(((bits(key, c) >> _S32) * high) >> _S32)
        else:
            out_f[k] = normal(key, c)
        k += step

# ------------------------------------------------------------------ randomized Walsh-Hadamard
@dev
def block_fwht(buf, N):
    """In-place unnormalised FWHT of ``buf[:N]`` in shared memory by the whole block."""
    h = 1
    while h < N:
        t = cuda.threadIdx.x
        while t < N // 2:
            a = (t // h) * 2 * h + (t % h)
            p = buf[a]
            q = buf[a + h]
            buf[a] = p + q
            buf[a + h] = p - q
            t += cuda.blockDim.x
        cuda.syncthreads()
        h *= 2


@cuda.jit
def fwht_shared(y, x, rows, p, q, chunk, key, use_signs, signs_at_load, scale):
    buf = cuda.shared.array(FWHT_SHARED, float32)
    nchunks = p // chunk
    blk = cuda.blockIdx.x
    if blk >= rows * q * nchunks:
        return
    row = blk // (q * nchunks)
    rem = blk % (q * nchunks)
    j = rem // nchunks
    ci = rem % nchunks
    base = row * p * q
    t = cuda.threadIdx.x
    while t < chunk:
        pos = (ci * chunk + t) * q + j
        v = float32(x[base + pos])
        if use_signs and signs_at_load:
            v *= sign(key, np.uint64(pos))
        buf[t] = v
        t += cuda.blockDim.x
    cuda.syncthreads()
    block_fwht(buf, chunk)
    t = cuda.threadIdx.x
    while t < chunk:
        pos = (ci * chunk + t) * q + j
        v = buf[t] * scale
        if use_signs and not signs_at_load:
            v *= sign(key, np.uint64(pos))
        y[base + pos] = v
        t += cuda.blockDim.x

@cuda.jit
def fwht_global_stage(y, rows, p, q, h):
    pairs = rows * q * (p // 2)
    k = cuda.grid(1)
    while k < pairs:
        row = k // (q * (p // 2))
        rem = k % (q * (p // 2))
        t = rem // q
        j = rem % q
        a = (t // h) * 2 * h + (t % h)
        ia = row * p * q + a * q + j
        ib = ia + h * q
        u = y[ia]
        w = y[ib]
        y[ia] = u + w
        y[ib] = u - w
        k += cuda.gridsize(1)

# ------------------------------------------------------------------ bit packing (FORMAT.md)
@cuda.jit
def pack_bits(codes, out, ncodes, nbytes, b):
    byte = cuda.grid(1)
    while byte < nbytes:
        v = 0
        for t in range(8):
            s = byte * 8 + t
            k = s // b
            if k < ncodes:
                v |= ((int64(codes[k]) >> (s - k * b)) & 1) << t
        out[byte] = v
        byte += cuda.gridsize(1)

@dev
def code_at(packed, k, b):
    v = 0
    s0 = k * b
    for j in range(b):
        s = s0 + j
        v |= ((int64(packed[s >> 3]) >> (s & 7)) & 1) << j
    return v

@cuda.jit
def unpack_bits(packed, codes, ncodes, b):
    k = cuda.grid(1)
    while k < ncodes:
        codes[k] = code_at(packed, k, b)
        k += cuda.gridsize(1)

# ------------------------------------------------------------------ SDDMM
@cuda.jit
def sddmm(A, Bt, rows, cols, out, nnz, k, lanes, j0, j1, accumulate):
    part = cuda.shared.array(1024, float32)
    tid = cuda.threadIdx.x
    groups = cuda.blockDim.x // lanes
    g = tid // lanes
    lane = tid % lanes
    e0 = cuda.blockIdx.x * groups
    while e0 < nnz:
        e = e0 + g
        acc = float32(0.0)
        if e < nnz:
            ra = rows[e] * k
            cb = cols[e] * k
            j = j0 + lane
            while j < j1:
                acc += A[ra + j] * Bt[cb + j]
                j += lanes
        part[tid] = acc
        cuda.syncthreads()
        s = lanes // 2
        while s > 0:
            if lane < s:
                part[tid] += part[tid + s]
            cuda.syncthreads()
            s //= 2
        if lane == 0 and e < nnz:
            if accumulate:
                out[e] += part[tid]
            else:
                out[e] = part[tid]
        cuda.syncthreads()
        e0 += cuda.gridDim.x * groups

# ------------------------------------------------------------------ top-k (radix select)
@cuda.jit
def radix_hist(keys, rows, n, prefix, shift, hist):
    h = cuda.shared.array(256, uint32)
    row = cuda.blockIdx.y
    t = cuda.threadIdx.x
    while t < 256:
        h[t] = 0
        t += cuda.blockDim.x
    cuda.syncthreads()
    pre = prefix[row]
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    while i < n:
        key = keys[row * n + i]
        if shift == 24 or (key >> (shift + 8)) == (pre >> (shift + 8)):
            cuda.atomic.add(h, (key >> shift) & 255, uint32(1))
        i += cuda.blockDim.x * cuda.gridDim.x
    cuda.syncthreads()
    t = cuda.threadIdx.x
    while t < 256:
        if h[t]:
            cuda.atomic.add(hist, row * 256 + t, h[t])
        t += cuda.blockDim.x

@cuda.jit
def select_count(keys, rows, n, thr, chunk, nchunks, cnt_gt, cnt_eq):
    row = cuda.blockIdx.y
    c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if c >= nchunks:
        return
    T = thr[row]
    gt = 0
    eq = 0
    end = min((c + 1) * chunk, n)
    for i in range(c * chunk, end):
        key = keys[row * n + i]
        if key > T:
            gt += 1
        elif key == T:
            eq += 1
    cnt_gt[row * nchunks + c] = gt
    cnt_eq[row * nchunks + c] = eq

@cuda.jit
def select_write(keys, rows, n, thr, need, chunk, nchunks, off_gt, off_eq, kk, out):
    row = cuda.blockIdx.y
    c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if c >= nchunks:
        return
    T = thr[row]
    nd = need[row]
    eq = off_eq[row * nchunks + c]
    pos = off_gt[row * nchunks + c] + min(eq, nd)
    end = min((c + 1) * chunk, n)
    for i in range(c * chunk, end):
        key = keys[row * n + i]
        if key > T:
            out[row * kk + pos] = i
            pos += 1
        elif key == T:
            if eq < nd:
                out[row * kk + pos] = i
                pos += 1
            eq += 1

# ------------------------------------------------------------------ in-kernel sketch
@cuda.jit
def sketch(X, n, c, sx0, sx1, Y, s, key, kind, scale):
    Ssh = cuda.shared.array((SKETCH_TILE, SKETCH_PAD), float32)
    Xsh = cuda.shared.array((SKETCH_TILE, SKETCH_PAD), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    col = cuda.blockIdx.x * SKETCH_TILE + tx
    j = cuda.blockIdx.y * SKETCH_TILE + ty
    acc = float32(0.0)
    i0 = 0
    while i0 < n:
        si = i0 + tx
        sv = float32(0.0)
        if si < n and j < s:
            ctr = np.uint64(si * s + j)
            if kind == 0:
                sv = sign(key, ctr)
            else:
                sv = float32(normal(key, ctr))
        Ssh[tx, ty] = sv
        xi = i0 + ty
        if xi < n and col < c:
            Xsh[ty, tx] = X[xi * sx0 + col * sx1]
        else:
            Xsh[ty, tx] = float32(0.0)
        cuda.syncthreads()
        for t in range(SKETCH_TILE):
            acc += Ssh[t, ty] * Xsh[t, tx]
        cuda.syncthreads()
        i0 += SKETCH_TILE
    if j < s and col < c:
        Y[j * c + col] = acc * scale

# ------------------------------------------------------------------ CRS gather and sampling
@cuda.jit
def gather_cols(A, m, sa0, sa1, idx, w, c, As):
    k = cuda.grid(1)
    while k < m * c:
        r = k // c
        t = k % c
        As[k] = w[t] * A[r * sa0 + idx[t] * sa1]
        k += cuda.gridsize(1)

@cuda.jit
def gather_rows(B, p, sb0, sb1, idx, w, c, Bs):
    k = cuda.grid(1)
    while k < c * p:
        t = k // p
        col = k % p
        Bs[k] = w[t] * B[idx[t] * sb0 + col * sb1]
        k += cuda.gridsize(1)

@cuda.jit
def sample_cdf(cdf, n, c, key, offset, idx):
    t = cuda.grid(1)
    while t < c:
        u = uniform(key, np.uint64(offset + t)) * cdf[n - 1]
        lo = 0
        hi = n - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if cdf[mid] > u:
                hi = mid
            else:
                lo = mid + 1
        idx[t] = lo
        t += cuda.gridsize(1)

# ------------------------------------------------------------------ LoTR core
@cuda.jit
def lotr_core(Z, G, Y, L, t, ra, rb, zs):
    g = cuda.shared.array(LOTR_MAXG, float32)
    l = cuda.blockIdx.y
    k = cuda.threadIdx.x
    while k < ra * rb:
        g[k] = G[l * ra * rb + k]
        k += cuda.blockDim.x
    cuda.syncthreads()
    per = t * rb
    k = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    while k < per:
        row = k // rb
        col = k % rb
        acc = float32(0.0)
        for a in range(ra):
            acc += Z[l * zs + row * ra + a] * g[a * rb + col]
        Y[l * per + k] = acc
        k += cuda.blockDim.x * cuda.gridDim.x


# ------------------------------------------------------------------ Kashin
@cuda.jit
def centroid_code(x, scale, table, ntab, n, N, codes):
    k = cuda.grid(1)
    while k < n:
        s = scale[k // N]
        v = float32(x[k] / (s if s != 0 else float32(1.0)))
        lo = 0
        hi = ntab - 1
        while lo < hi:
            mid = (lo + hi) // 2
            m = (table[mid] + table[mid + 1]) * float32(0.5)
            if v >= m:
                lo = mid + 1
            else:
                hi = mid
        codes[k] = lo
        k += cuda.gridsize(1)

@cuda.jit
def decode_codes(packed, scale, table, b, n, N, out):
    k = cuda.grid(1)
    while k < n:
        out[k] = scale[k // N] * table[code_at(packed, k, b)]
        k += cuda.gridsize(1)

@cuda.jit
def kashin_matmul(x, xt, t, in_pad, cu, cv, su, sv, tu, tv, bu, bv, N, out, y):
    part = cuda.shared.array((KT, KMAXT), float32)
    acc = cuda.local.array(KT, float32)
    r = cuda.blockIdx.x
    t0 = cuda.blockIdx.y * KT
    tid = cuda.threadIdx.x
    for a in range(KT):
        acc[a] = float32(0.0)
    col = tid
    while col < in_pad:
        k = r * in_pad + col
        b = k // N
        wu = su[b] * tu[code_at(cu, k, bu)]
        wv = sv[b] * tv[code_at(cv, k, bv)]
        for a in range(KT):
            tt = t0 + a
            if tt < t:
                acc[a] += wu * x[tt * in_pad + col] + wv * xt[tt * in_pad + col]
        col += cuda.blockDim.x
    for a in range(KT):
        part[a, tid] = acc[a]
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            for a in range(KT):
                part[a, tid] += part[a, tid + s]
        cuda.syncthreads()
        s //= 2
    if tid < KT:
        tt = t0 + tid
        if tt < t:
            y[tt * out + r] = part[tid, 0]


@cuda.jit
def kashin_step(r, u, v, rn2, nblocks, N, key, clip):
    buf = cuda.shared.array(KS_MAXN, float32)
    red = cuda.shared.array(KS_MAXT, float32)
    b = cuda.blockIdx.x
    if b >= nblocks:
        return
    base = b * N
    tid = cuda.threadIdx.x
    inv = float32(1.0 / math.sqrt(N))
    lam = float32(clip * math.sqrt(rn2[b])) * inv
    i = tid
    while i < N:
        xv = r[base + i]
        a = min(max(xv, -lam), lam)
        u[base + i] += a
        buf[i] = xv - a
        i += cuda.blockDim.x
    cuda.syncthreads()
    block_fwht(buf, N)
    i = tid
    while i < N:
        sg = sign(key, np.uint64(i))
        w = buf[i] * inv * sg
        cc = min(max(w, -lam), lam)
        v[base + i] += cc
        buf[i] = (w - cc) * sg
        i += cuda.blockDim.x
    cuda.syncthreads()
    block_fwht(buf, N)
    acc = float32(0.0)
    i = tid
    while i < N:
        yv = buf[i] * inv
        r[base + i] = yv
        acc += yv * yv
        i += cuda.blockDim.x
    red[tid] = acc
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            red[tid] += red[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        rn2[b] = red[0]



class _Quiet:
    """Wraps a kernel so simulator launches do not spam uint64 wrap-around warnings."""

    def __init__(self, kern):
        self.kern = kern

    def __getitem__(self, cfg):
        launcher = self.kern[cfg]

        def run(*args):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return launcher(*args)

        return run


def get(name: str):
    """The Numba kernel registered as ``name`` in :data:`lrmath_gpu.KERNELS`."""
    from ._registry import KERNELS

    kern = globals()[KERNELS[name].numba_name]
    return _Quiet(kern)


def signatures() -> dict:
    """Launch signatures (NumPy-scalar argument types as the wrappers pass them) of every kernel,
    for ahead-of-time checks such as ``numba.cuda.compile_ptx`` without a GPU."""
    from numba import types as T

    f32, f64, u8, u32, u64, i64 = (T.float32[::1], T.float64[::1], T.uint8[::1], T.uint32[::1], T.uint64[::1],
                                   T.int64[::1])
    I, L, U, F = T.int32, T.int64, T.uint64, T.float32
    return {
        "rng_fill": (U, L, L, I, U, f64, u64, i64),
        "fwht_shared": (f32, f32, L, I, I, I, U, I, I, F),
        "fwht_global_stage": (f32, L, I, I, I),
        "pack_bits": (u8, u8, L, L, I),
        "unpack_bits": (u8, u8, L, I),
        "sddmm": (f32, f32, i64, i64, f32, L, I, I, I, I, I),
        "radix_hist": (u32, L, L, u32, I, u32),
        "select_count": (u32, L, L, u32, I, L, i64, i64),
        "select_write": (u32, L, L, u32, i64, I, L, i64, i64, L, i64),
        "sketch": (f32, L, L, L, L, f32, L, U, I, F),
        "gather_cols": (f32, L, L, L, i64, f32, L, f32),
        "gather_rows": (f32, L, L, L, i64, f32, L, f32),
        "sample_cdf": (f64, L, L, U, L, i64),
        "lotr_core": (f32, f32, f32, L, L, I, I, L),
        "centroid_code": (f32, f32, f32, I, L, I, u8),
        "decode_codes": (u8, f32, f32, I, L, I, f32),
        "kashin_matmul": (f32, f32, L, L, u8, u8, f32, f32, f32, f32, I, I, I, L, f32),
        "kashin_step": (f32, f32, f32, f32, L, I, U, F),
    }
