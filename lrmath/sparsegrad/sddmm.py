"""The transformed gradient at a fixed index set, without the dense gradient.

For ``A = dY U (t, n)`` and ``B = X V (t, m)`` the transformed gradient is
``G~ = A^T B`` (paper eq. 2). At a fixed flat index set ``idx`` (rows ``r``, cols ``c``)
only

    G~[r_k, c_k] = sum_t A[t, r_k] B[t, c_k]                  (a sampled dense-dense product)

is needed: ``2 t nnz`` flops instead of ``2 t n m``. Two routes:

* ``"sparse"`` -- gather the columns and reduce, in chunks of ``nnz`` so the temporary
  stays ``t * chunk`` elements;
* ``"dense"`` -- GEMMs on the block of touched rows and columns ``I x J`` (``2 t |I| |J|``
  flops at GEMM speed), computed in row chunks so the temporary stays ``chunk_elems``
  elements, then gather. It wins when the index set covers much of its block (the learned
  basis concentrates the energy in the leading rows and columns) -- and, because a GEMM
  runs far faster per flop than a gather, often even for scattered sets.

``method="auto"`` takes the route with the smaller predicted time of a :class:`RouteModel`
fitted to measurements of both routes on this machine (:func:`calibrate_routes`, run once
and cached under ``lrmath._progress.cache_dir("sparsegrad")`` like the RunLoRA autotuner).
A fixed flop ratio cannot do this: on the 2-core CPU the sparse route took 0.38x to 12.6x
the dense route's time over the benchmark grid, and the fitted GEMM is ~130x faster per
flop than the gather-reduce but pays per touched column and per block entry
(``benchmarks/results/sparsegrad_route_cpu.md``: auto picked the faster route in 23 of 24
cells, and auto / faster route <= 1.16 in all).

Transforms are restricted the same way: only the columns ``U[:, I]`` and ``V[:, J]``
are needed, ``2 t n |I|`` flops, or the full fast transform (``t * flops``) when that is
cheaper (:func:`sparse_gradient`).

Results convert to COO/CSR (:func:`to_sparse`): SciPy sparse arrays on NumPy, cupyx on
CuPy, torch sparse tensors for torch.
"""

from __future__ import annotations

import numpy as np

from ..backend import array_namespace, backend_name, check_array, check_choice, check_int, check_positive_int, device_of, is_numpy, like, public, to_numpy
from ..errors import OptionError, ShapeError
from .bases import basis, columns
from .select import check_indices, topk_of_values

__all__ = ["sampled_product", "sparse_gradient", "topk_product", "to_sparse", "route_cost", "RouteModel", "route_model",
           "fit_route_model", "calibrate_routes", "DEFAULT_ROUTE_MODEL"]


def _dev(x):
    return {} if backend_name(x) == "numpy" else {"device": device_of(x)}


def _split(idx: np.ndarray, m: int):
    return idx // m, idx % m


# ----------------------------------------------------------------------------- route model
#: Feature names of the two routes' time models (seconds = features . coefficients):
#: dense -- a call, the GEMM flops ``2 t |I| |J|``, the column gathers ``t (|I| + |J|)``, the
#: block written ``|I| |J|`` (a GEMM with small ``t`` is bound by its output, not its flops)
#: and the final gather ``nnz``; sparse -- a call and the gather-multiply-reduce flops ``2 t nnz``.
DENSE_FEATURES = ("call", "gemm_flops", "column_gather", "block", "entry_gather")
SPARSE_FEATURES = ("call", "gather_flops")


def _features(t: int, rows: int, cols: int, nnz: int) -> tuple[np.ndarray, np.ndarray]:
    dense = np.array([1.0, 2.0 * t * rows * cols, float(t) * (rows + cols), float(rows) * cols, float(nnz)])
    sparse = np.array([1.0, 2.0 * t * nnz])
    return dense, sparse


@public(methods=False)
class RouteModel:
    """Fitted time model of the two routes of :func:`sampled_product` on one backend.

    ``predict(t, rows, cols, nnz)`` returns predicted seconds ``{"dense": ..., "sparse": ...}``
    (linear in :data:`DENSE_FEATURES` / :data:`SPARSE_FEATURES`, non-negative coefficients
    from :func:`fit_route_model`); ``choose`` picks the smaller.
    """

    def __init__(self, dense, sparse, *, source: str = ""):
        self.dense = np.asarray(dense, dtype=np.float64)
        self.sparse = np.asarray(sparse, dtype=np.float64)
        if self.dense.shape != (len(DENSE_FEATURES),) or self.sparse.shape != (len(SPARSE_FEATURES),):
            raise ShapeError(f"route model needs {len(DENSE_FEATURES)} dense and {len(SPARSE_FEATURES)} sparse coefficients")
        if np.any(self.dense < 0) or np.any(self.sparse < 0) or not (np.all(np.isfinite(self.dense)) and np.all(np.isfinite(self.sparse))):
            raise OptionError("route model coefficients must be finite and >= 0")
        self.source = source

    def predict(self, t: int, rows: int, cols: int, nnz: int, *, overhead: bool = True) -> dict:
        """Predicted seconds of each route; ``overhead=False`` drops the per-call terms and the
        column gathers (a caller such as the torch layer that precomputes the index structure
        and already holds the restricted ``A[:, I]``, ``B[:, J]`` does not pay them)."""
        fd, fs = _features(t, rows, cols, nnz)
        if not overhead:
            fd[0] = fs[0] = fd[2] = 0.0
        return {"dense": float(fd @ self.dense), "sparse": float(fs @ self.sparse)}

    def choose(self, t: int, rows: int, cols: int, nnz: int, *, overhead: bool = True) -> str:
        p = self.predict(t, rows, cols, nnz, overhead=overhead)
        return "dense" if p["dense"] <= p["sparse"] else "sparse"

    @property
    def gemm_speedup(self) -> float:
        """Flop rate of the GEMM over that of the gather-reduce (for reports)."""
        return float(self.sparse[1] / self.dense[1]) if self.dense[1] > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"dense": self.dense.tolist(), "sparse": self.sparse.tolist(), "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> "RouteModel":
        return cls(d["dense"], d["sparse"], source=d.get("source", ""))

    def __repr__(self) -> str:
        return f"RouteModel(gemm_speedup={self.gemm_speedup:.3g}, source={self.source!r})"


@public
def fit_route_model(samples, *, source: str = "fit") -> RouteModel:
    """Fit :class:`RouteModel` to measurements.

    Parameters
    ----------
    samples : iterable of dict
        ``{"t", "rows", "cols", "nnz", "dense", "sparse"}``: a problem (touched rows and
        columns of the block, entries) and the measured seconds of each route.

    Returns
    -------
    RouteModel
        Per route, non-negative least squares of the *relative* error (each sample's row
        divided by its time), so small and large problems weigh alike.
    """
    from scipy.optimize import nnls

    rows_d, rows_s = [], []
    for smp in samples:
        fd, fs = _features(int(smp["t"]), int(smp["rows"]), int(smp["cols"]), int(smp["nnz"]))
        rows_d.append(fd / float(smp["dense"]))
        rows_s.append(fs / float(smp["sparse"]))
    if len(rows_d) < len(DENSE_FEATURES):
        raise OptionError(f"need at least {len(DENSE_FEATURES)} samples to fit the route model, got {len(rows_d)}")
    Xd, Xs = np.array(rows_d), np.array(rows_s)
    # scale columns for conditioning, then undo
    sd, ss = np.abs(Xd).max(0) + 1e-300, np.abs(Xs).max(0) + 1e-300
    cd, _ = nnls(Xd / sd, np.ones(len(Xd)))
    cs, _ = nnls(Xs / ss, np.ones(len(Xs)))
    return RouteModel(cd / sd, cs / ss, source=source)


def _calibration_grid():
    """Problems measured by :func:`calibrate_routes`: filled blocks and scattered sets."""
    out = []
    for t in (32, 256):
        for rows, cols in ((64, 64), (256, 256), (512, 128), (128, 512)):
            for fill in (1.0, 1 / 4, 1 / 16, 1 / 64):
                out.append((t, rows, cols, max(1, int(round(fill * rows * cols)))))
        for rows, cols in ((768, 768), (1536, 384)):  # MLP-sized blocks: large GEMMs run faster per flop
            for fill in (1 / 16, 1 / 64, 1 / 256):
                out.append((t, rows, cols, max(1, int(round(fill * rows * cols)))))
    return out


def _measure(fn, repeats: int) -> float:
    """CPU seconds of the process per call (``time.process_time``): unlike wall time it does not
    count the time other processes hold the cores, so a calibration on a shared, loaded
    machine still measures the routes' own cost (threads included)."""
    import time

    fn()
    best = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best.append(time.process_time() - t0)
    return float(np.min(best))


@public
def calibrate_routes(backend: str = "numpy", *, repeats: int = 5, seed: int = 0) -> tuple[RouteModel, list[dict]]:
    """Time both routes of :func:`sampled_product` on a small grid and fit :class:`RouteModel`.

    ``backend``: ``"numpy"`` or ``"torch"`` (CPU tensors). Takes a few seconds. Returns the
    model and the samples (see :func:`fit_route_model`).
    """
    check_choice(backend, "backend", ("numpy", "torch"))
    repeats = check_int(repeats, "repeats", minimum=1, maximum=100)
    r = np.random.default_rng(check_int(seed, "seed", minimum=0, maximum=2**32 - 1))
    samples = []
    for t, rows, cols, nnz in _calibration_grid():
        A = r.standard_normal((t, rows)).astype(np.float32)
        B = r.standard_normal((t, cols)).astype(np.float32)
        idx = np.sort(r.choice(rows * cols, nnz, replace=False))
        if backend == "torch":
            import torch

            A, B = torch.from_numpy(A), torch.from_numpy(B)
        elif backend != "numpy":
            raise OptionError(f"calibrate_routes measures 'numpy' or 'torch', got {backend!r}")
        rr, cc = _split(idx, cols)
        samples.append({"t": t, "rows": int(np.unique(rr).size), "cols": int(np.unique(cc).size), "nnz": nnz,
                        "dense": _measure(lambda: sampled_product(A, B, idx, method="dense"), repeats),
                        "sparse": _measure(lambda: sampled_product(A, B, idx, method="sparse"), repeats)})
    return fit_route_model(samples, source=f"calibrated:{backend}"), samples


#: Route model used when calibration is switched off (``LRMATH_CALIBRATE=0``): the fit
#: committed in ``benchmarks/results/sparsegrad_route_cpu.json`` (``meta.models.numpy``; regenerate
#: with ``python -m benchmarks sparsegrad_route --recalibrate``), NumPy float32, CPU seconds, 2-core CPU.
DEFAULT_ROUTE_MODEL = {"dense": [0.000236, 1.53e-11, 3.5e-09, 1.05e-09, 6.16e-08], "sparse": [0.000149, 2.01e-09],
                       "source": "benchmarks/results/sparsegrad_route_cpu.json"}

_MODELS: dict[str, RouteModel] = {}


def _route_cache_path() -> str:
    import os

    from .._progress import cache_dir

    return os.path.join(cache_dir("sparsegrad"), "routes.json")


def _machine_key(backend: str) -> str:
    import os
    import platform

    return f"{backend}|{platform.machine()}|{platform.processor()}|cpus={os.cpu_count()}"


@public
def route_model(backend: str = "numpy", *, recalibrate: bool = False) -> RouteModel:
    """The route model of ``backend`` on this machine: measured once by :func:`calibrate_routes`
    and cached as JSON under ``lrmath._progress.cache_dir("sparsegrad")`` (keyed by backend and
    machine), like the RunLoRA autotuner. ``LRMATH_CALIBRATE=0`` uses :data:`DEFAULT_ROUTE_MODEL`."""
    import json
    import os
    import tempfile

    if os.environ.get("LRMATH_CALIBRATE", "1") == "0":
        return RouteModel.from_dict(DEFAULT_ROUTE_MODEL)
    key = _machine_key(backend)
    if not recalibrate and key in _MODELS:
        return _MODELS[key]
    path = _route_cache_path()
    data: dict = {}
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        data = {}
    if not recalibrate and isinstance(data, dict) and key in data:
        try:
            _MODELS[key] = RouteModel.from_dict(data[key])
            return _MODELS[key]
        except (KeyError, ValueError, ShapeError):
            pass  # a damaged entry: measure again
    model, _ = calibrate_routes(backend if backend in ("numpy", "torch") else "numpy")
    data = data if isinstance(data, dict) else {}
    data[key] = model.to_dict()
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:  # a read-only cache folder: keep the model for this process only
        pass
    _MODELS[key] = model
    return model


@public
def route_cost(t: int, idx, shape, *, model: RouteModel | None = None, backend: str = "numpy",
               gemm_speedup: float | None = None, dense_cap: float | None = None) -> dict:
    """Predicted cost of both routes of :func:`sampled_product` for ``t`` rows and flat ``idx``
    into ``shape``, and the choice (the smaller prediction).

    ``model`` defaults to :func:`route_model` ``(backend)``. ``gemm_speedup`` (the GPU mirror's
    knob) instead compares flops: dense if ``2 t |I| |J| <= gemm_speedup * 2 t nnz``.
    ``dense_cap`` (optional) refuses the dense route when ``|I| |J| > dense_cap * nnz``.

    Returns ``{"sparse": 2 t nnz, "dense": 2 t |I| |J|, "block", "rows", "cols", "route",
    "predicted": {"dense": s, "sparse": s} or None}``.
    """
    idx = check_indices(idx, shape)
    r, c = _split(idx, shape[1])
    ni, nj = _touched(r, c, shape[1])
    route, pred = _choose(t, ni, nj, idx.size, model, backend, gemm_speedup, dense_cap)
    return {"sparse": 2 * t * idx.size, "dense": 2 * t * ni * nj, "block": ni * nj, "rows": ni, "cols": nj, "route": route,
            "predicted": pred}


def _touched(r: np.ndarray, c: np.ndarray, m: int) -> tuple[int, int]:
    """Distinct rows and columns of a sorted flat index set in O(nnz + m), without sorting
    (rows are already sorted; columns are counted by a bincount)."""
    if r.size == 0:
        return 0, 0
    return int(np.count_nonzero(np.diff(r))) + 1, int(np.count_nonzero(np.bincount(c, minlength=m)))


def _choose(t, ni, nj, nnz, model, backend, gemm_speedup, dense_cap):
    pred = None
    if gemm_speedup is not None:
        route = "dense" if ni * nj <= gemm_speedup * nnz else "sparse"
    else:
        model = model or route_model(backend)
        pred = model.predict(t, ni, nj, nnz)
        route = "dense" if pred["dense"] <= pred["sparse"] else "sparse"
    if dense_cap is not None and ni * nj > dense_cap * max(nnz, 1):
        route = "sparse"
    return route, pred


def _check_sampled_args(A, B, idx, shape, method: str):
    """Validate :func:`sampled_product`'s arguments (shared with the GPU mirror).

    Returns ``(t, n, m, idx)`` with ``idx`` checked against ``(n, m)``.
    """
    check_array(A, "A", ndim=2)
    check_array(B, "B", ndim=2)
    array_namespace(A, B)  # raises DeviceError when A and B mix libraries or devices
    t, n = int(A.shape[0]), int(A.shape[1])
    if int(B.shape[0]) != t:
        raise ShapeError(f"A has {t} rows but B has {B.shape[0]}; both must be (t, .)")
    m = int(B.shape[1])
    if shape is not None and tuple(shape) != (n, m):
        raise ShapeError(f"shape {tuple(shape)} does not match A^T B of shape {(n, m)}")
    if A.dtype != B.dtype:
        from ..errors import DTypeError

        raise DTypeError(f"A and B must share a dtype, got {A.dtype} and {B.dtype}")
    idx = check_indices(idx, (n, m))
    if method not in ("auto", "sparse", "dense"):
        raise OptionError(f"method must be 'auto', 'sparse' or 'dense', got {method!r}")
    return t, n, m, idx

@public
def sampled_product(A, B, idx, shape=None, *, method: str = "auto", chunk_elems: int = 1 << 22,
                    model: RouteModel | None = None, gemm_speedup: float | None = None, dense_cap: float | None = None):
    """Entries of ``A^T B`` at flat indices ``idx``: ``out[k] = sum_t A[t, r_k] B[t, c_k]``.

    Parameters
    ----------
    A : array (t, n)
    B : array (t, m)
    idx : int array (nnz,)
        Sorted flat row-major indices into ``(n, m)``.
    method : {'auto', 'sparse', 'dense'}
        Route; ``'auto'`` picks the smaller predicted time of :func:`route_cost` (the
        machine's calibrated :class:`RouteModel`, or ``model``).
    chunk_elems : int
        Bound on the temporaries: ``t * chunk`` of the sparse route, ``rows_chunk * |J|`` of
        the dense route's block (computed in row chunks, so it never holds ``|I| x |J|``).

    Returns
    -------
    array (nnz,), same kind and dtype as ``A``.
    """
    xp = check_array(A, "A", ndim=2)
    t, n, m, idx = _check_sampled_args(A, B, idx, shape, method)
    if idx.size == 0:
        return xp.zeros((0,), dtype=A.dtype, **_dev(A))
    r, c = _split(idx, m)
    if method == "auto":
        method = _choose(t, *_touched(r, c, m), idx.size, model, backend_name(A), gemm_speedup, dense_cap)[0]
    if method == "dense":
        I, ri = np.unique(r, return_inverse=True)
        J, ci = np.unique(c, return_inverse=True)
        AI = A[:, I] if is_numpy(A) else xp.take(A, like(I, A), axis=1)
        BJ = B[:, J] if is_numpy(B) else xp.take(B, like(J, B), axis=1)
        AIt = xp.permute_dims(AI, (1, 0))
        step = max(1, int(chunk_elems) // max(J.size, 1))
        # idx is sorted row-major, so the entries of local rows [a, b) are one contiguous range
        bounds = np.searchsorted(ri, np.arange(0, I.size + step, step))
        parts = []
        for j, a in enumerate(range(0, I.size, step)):
            lo, hi = int(bounds[j]), int(bounds[j + 1])
            C = xp.reshape(AIt[a:min(a + step, I.size), :] @ BJ, (-1,))
            flat = ((ri[lo:hi] - a) * J.size + ci[lo:hi]).astype(np.int64)
            parts.append(C[flat] if is_numpy(C) else xp.take(C, like(flat, C), axis=0))
        return parts[0] if len(parts) == 1 else xp.concat(parts)
    chunk = max(1, int(chunk_elems) // max(t, 1))
    parts = []
    for s in range(0, idx.size, chunk):
        rs, cs = r[s : s + chunk], c[s : s + chunk]
        if is_numpy(A):
            parts.append(np.einsum("tk,tk->k", A[:, rs], B[:, cs]))
        else:
            a = xp.take(A, like(rs, A), axis=1)
            b = xp.take(B, like(cs, B), axis=1)
            parts.append(xp.sum(a * b, axis=0))
    return parts[0] if len(parts) == 1 else xp.concat(parts)


def _restricted(Q, Y, cols_needed: np.ndarray):
    """``Y Q[:, I]`` (t, |I|): the transformed rows at the needed basis vectors, by whichever of
    the column slice (``2 t n |I|``) or the full transform (``t * Q.flops``) is cheaper."""
    n = Q.n
    if 2 * n * cols_needed.size < Q.flops:
        QI = columns(Q, cols_needed, ref=Y)
        return Y @ QI
    full = Q.apply_t(Y, axis=1)  # rows y -> Q^T y = (Y Q)[t, :]
    xp = array_namespace(full)
    return full[:, cols_needed] if is_numpy(full) else xp.take(full, like(cols_needed, full), axis=1)



def _check_gradient_args(dY, X, U, V, idx):
    """Validate :func:`sparse_gradient`'s arguments (shared with the GPU mirror).

    Returns ``(n, m, U, V, idx)`` with the bases resolved and ``idx`` checked against ``(n, m)``.
    """
    check_array(dY, "dY", ndim=2)
    check_array(X, "X", ndim=2)
    if dY.shape[0] != X.shape[0]:
        raise ShapeError(f"dY {tuple(dY.shape)} and X {tuple(X.shape)} must have the same number of rows")
    n, m = int(dY.shape[1]), int(X.shape[1])
    U, V = basis(U, n), basis(V, m)
    return n, m, U, V, check_indices(idx, (n, m))

@public
def sparse_gradient(dY, X, U, V, idx, *, method: str = "auto"):
    """Transformed weight gradient ``G~ = U^T (dY^T X) V`` at flat indices ``idx``, never forming
    the dense ``(n, m)`` gradient (paper eq. 2 evaluated at the index set).

    Parameters
    ----------
    dY : array (t, n)
        Gradient of the layer output (``t`` = tokens, any leading axes flattened first).
    X : array (t, m)
        Layer input.
    U, V : basis objects or names
        Orthogonal ``(n, n)`` and ``(m, m)`` bases (see :mod:`lrmath.sparsegrad.bases`).
    idx : int array (nnz,)
        Sorted flat indices into ``(n, m)``.

    Returns
    -------
    array (nnz,)
    """
    n, m, U, V, idx = _check_gradient_args(dY, X, U, V, idx)
    r, c = _split(idx, m)
    I, ri = np.unique(r, return_inverse=True)
    J, ci = np.unique(c, return_inverse=True)
    A = _restricted(U, dY, I)
    B = _restricted(V, X, J)
    local = (ri * J.size + ci).astype(np.int64)
    return sampled_product(A, B, local, (I.size, J.size), method=method)


@public
def topk_product(A, B, k: int, *, block_rows: int | None = None):
    """Global top-``k`` entries of ``|A^T B|`` (``A (t, n)``, ``B (t, m)``) computed in blocks of
    rows, so only ``block_rows x m`` of the product exists at a time.

    Returns ``(idx, values)`` with ``idx`` sorted flat indices into ``(n, m)`` (NumPy int64)
    and ``values`` the entries there (float64 NumPy). Tie rule as :func:`topk_global`.
    """
    check_array(A, "A", ndim=2)
    check_array(B, "B", ndim=2)
    if A.shape[0] != B.shape[0]:
        raise ShapeError(f"A {tuple(A.shape)} and B {tuple(B.shape)} must have the same number of rows")
    n, m = int(A.shape[1]), int(B.shape[1])
    k = check_positive_int(k, "k", maximum=n * m)
    xp = array_namespace(A, B)
    if block_rows is None:
        block_rows = max(1, min(n, (1 << 22) // max(m, 1)))
    block_rows = check_positive_int(block_rows, "block_rows")
    best_idx = np.zeros(0, dtype=np.int64)
    best_val = np.zeros(0, dtype=np.float64)
    At = xp.permute_dims(A, (1, 0))
    for s in range(0, n, block_rows):
        blk = np.asarray(to_numpy(At[s : s + block_rows, :] @ B), dtype=np.float64).ravel()
        kk = min(k, blk.size)
        a = np.abs(blk)
        thr = np.partition(a, a.size - kk)[a.size - kk]
        loc = np.flatnonzero(a >= thr)
        cand_idx = np.concatenate([best_idx, loc.astype(np.int64) + s * m])
        cand_val = np.concatenate([best_val, blk[loc]])
        keep = topk_of_values(cand_idx, np.abs(cand_val), k)
        best_idx, best_val = cand_idx[keep], cand_val[keep]
    return best_idx, best_val


@public
def to_sparse(values, idx, shape, format: str = "coo"):  # noqa: A002 - scipy's word
    """A sparse ``(n, m)`` matrix with ``values`` at flat ``idx``, in the library of ``values``.

    NumPy -> ``scipy.sparse.coo_array`` / ``csr_array``; CuPy -> ``cupyx.scipy.sparse``
    ``coo_matrix`` / ``csr_matrix``; torch -> ``torch.sparse_coo_tensor`` (coalesced) or a
    CSR tensor.
    """
    if format not in ("coo", "csr"):
        raise OptionError(f"format must be 'coo' or 'csr', got {format!r}")
    n, m = int(shape[0]), int(shape[1])
    idx = check_indices(idx, (n, m))
    if int(values.shape[0]) != idx.size or len(values.shape) != 1:
        raise ShapeError(f"values must be ({idx.size},), got {tuple(values.shape)}")
    r, c = _split(idx, m)
    kind = backend_name(values)
    if kind == "numpy":
        import scipy.sparse as sp

        coo = sp.coo_array((values, (r, c)), shape=(n, m))
        return coo if format == "coo" else coo.tocsr()
    if kind == "cupy":
        import cupy as cp
        import cupyx.scipy.sparse as csp

        coo = csp.coo_matrix((values, (cp.asarray(r), cp.asarray(c))), shape=(n, m))
        return coo if format == "coo" else coo.tocsr()
    if kind == "torch":
        import torch

        ind = torch.from_numpy(np.stack([r, c])).to(values.device)
        import warnings

        coo = torch.sparse_coo_tensor(ind, values, (n, m), is_coalesced=True, check_invariants=True)
        if format == "coo":
            return coo
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return coo.to_sparse_csr()
    raise OptionError(f"no sparse format for arrays of {kind}; convert to NumPy, CuPy or torch")
