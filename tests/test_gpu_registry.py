"""lrmath_gpu infrastructure: registry completeness, CUDA sources compile, lazy imports, backend switch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

import lrmath_gpu
from lrmath_gpu import HOT_PATHS, KERNELS
from lrmath_gpu._registry import LIBRARY_PATHS

IN_CI = os.environ.get("CI") == "true"

#: hot paths the GPU issue (#8) names; each must map to kernels with both implementations
ISSUE_HOT_PATHS = {
    "kashin.transform", "kashin.iteration", "kashin.centroid_coding", "kashin.pack", "kashin.unpack",
    "kashin.dequant_matmul", "sparsegrad.sddmm", "sparsegrad.topk", "sparsegrad.basis_transform",
    "randmm.sketch", "randmm.crs_gather", "lotr.core",
}


def test_every_issue_hot_path_is_registered():
    missing = ISSUE_HOT_PATHS - set(HOT_PATHS)
    assert not missing, f"hot paths without kernels: {sorted(missing)}"
    for path, names in HOT_PATHS.items():
        assert names, path
        for name in names:
            assert name in KERNELS, f"{path} names unknown kernel {name}"
    assert {"runlora.execute", "runlora.autotune"} <= set(LIBRARY_PATHS)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_has_cuda_and_numba_implementation(name):
    k = KERNELS[name]
    src = k.cuda_path().read_text()
    assert re.search(r'extern "C" __global__ void ' + re.escape(k.cuda_entry) + r"\(", src), (
        f"{k.cuda_file} lacks the CuPy entry point {k.cuda_entry}")
    pytest.importorskip("numba")
    from lrmath_gpu import _numba_kernels as nk

    obj = getattr(nk, k.numba_name, None)
    assert obj is not None, f"no Numba kernel {k.numba_name}"
    assert callable(getattr(obj, "__getitem__", None)), f"{k.numba_name} is not a numba.cuda.jit kernel"


def _nvcc():
    exe = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if exe is None:
        if IN_CI:
            pytest.fail("nvcc is required under CI=true to compile the CuPy kernel sources")
        pytest.skip("nvcc not found")
    return exe


def test_every_cuda_source_compiles_for_sm90(tmp_path):
    """The exact text CuPy's RawModule gets for each file (RNG device functions + file) compiles with
    ``nvcc -arch=sm_90 -cubin``, and every registered entry point is in the cubin. The compilations
    run concurrently (nvcc spends most of its wall time starting up)."""
    from lrmath_gpu._cupy import cuda_files, source

    nvcc = _nvcc()
    procs = {}
    for f in cuda_files():
        src = tmp_path / f
        src.write_text(source(f))
        out = tmp_path / (f + ".cubin")
        procs[f] = (out, subprocess.Popen([nvcc, "-arch=sm_90", "-cubin", "-std=c++17", "-o", str(out), str(src)],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    failures = []
    for f, (out, pr) in procs.items():
        _, err = pr.communicate(timeout=600)
        if pr.returncode != 0:
            failures.append(f"{f}:\n{err[-2000:]}")
            continue
        blob = out.read_bytes()
        for k in KERNELS.values():
            if k.cuda_file == f and k.cuda_entry.encode() not in blob:
                failures.append(f"{f}: entry {k.cuda_entry} missing from the cubin")
    assert not failures, "\n".join(failures)
    assert set(procs) == {k.cuda_file for k in KERNELS.values()}


_PTX_SCRIPT = r"""
import os, sys, types
os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
libdevice = sys.argv[1]
# Compile for sm_90 without a GPU or NVRTC: pin the target and libdevice that numba-cuda would
# otherwise ask the driver / NVRTC for (internal hooks; a setup failure is reported as SETUP).
try:
    import numba.cuda.cudadrv.nvrtc as nv
    import numba.cuda.cudadrv.libs as libs
    import numba.cuda.cudadrv.nvvm as nvvm
    import numba.cuda.api as api
    import numba.cuda.dispatcher as disp
    import numba.cuda as cuda
    nv.get_supported_ccs = lambda: ((9, 0),)
    libs.get_libdevice = nvvm.get_libdevice = lambda: libdevice
    fake = types.SimpleNamespace(compute_capability=(9, 0), id=0, name=b"sm90")
    api.get_current_device = cuda.get_current_device = lambda: fake
    if hasattr(disp, "get_current_device"):
        disp.get_current_device = api.get_current_device
    import lrmath_gpu._numba_kernels as nk
    from lrmath_gpu import KERNELS
except Exception as exc:
    print("SETUP", type(exc).__name__, exc)
    sys.exit(3)
sigs = nk.signatures()
missing = {k.numba_name for k in KERNELS.values()} - set(sigs)
if missing:
    print("NOSIG", sorted(missing))
    sys.exit(1)
bad = 0
for name, sig in sigs.items():
    try:
        ptx, _ = cuda.compile_ptx(getattr(nk, name).py_func, sig, cc=(9, 0))
        assert ".entry" in ptx or ".visible .entry" in ptx
    except Exception as exc:
        if "nvrtc" in str(exc).lower() or "driver" in str(exc).lower():
            print("SETUP", name, type(exc).__name__, str(exc)[:300])
            sys.exit(3)
        bad += 1
        print("FAIL", name, type(exc).__name__, str(exc)[:2000])
sys.exit(1 if bad else 0)
"""


def test_numba_kernels_compile_to_ptx_sm90():
    """Every Numba kernel type-checks and lowers to PTX for sm_90 with the wrappers' argument types,
    without a GPU (the simulator cannot catch GPU-only typing errors, e.g. non-literal shared shapes)."""
    pytest.importorskip("numba")
    libdevice = None
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "nvvm", "libdevice", "libdevice.10.bc")):
            libdevice = os.path.join(root, "nvvm", "libdevice", "libdevice.10.bc")
            break
    if libdevice is None:
        if IN_CI:
            pytest.fail("CUDA toolkit (nvvm/libdevice) is required under CI=true")
        pytest.skip("no CUDA toolkit libdevice found")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    res = subprocess.run([sys.executable, "-c", _PTX_SCRIPT, libdevice], capture_output=True, text=True, timeout=600, env=env)
    if res.returncode == 3:
        pytest.skip("numba-cuda offline PTX set-up unavailable: " + res.stdout[-500:])
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def test_import_is_light():
    code = ("import sys, lrmath_gpu; lrmath_gpu.KERNELS; "
            "bad = [m for m in ('cupy', 'numba', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_backend_switch():
    old = lrmath_gpu.get_backend(resolve=False)
    try:
        lrmath_gpu.set_backend("numba")
        assert lrmath_gpu.get_backend() == "numba"
        with lrmath_gpu.use_backend("cupy"):
            assert lrmath_gpu.get_backend(resolve=False) == "cupy"
        assert lrmath_gpu.get_backend() == "numba"
        with pytest.raises(ValueError, match="backend must be one of"):
            lrmath_gpu.set_backend("opencl")
    finally:
        lrmath_gpu.set_backend(old)
    st = lrmath_gpu.available()
    assert set(st) == {"cupy", "numba"} and all("ok" in v for v in st.values())


def test_unavailable_backend_is_a_clear_error():
    from lrmath.errors import BackendUnavailableError
    from lrmath_gpu import kernels as K

    if lrmath_gpu.available()["cupy"]["ok"]:
        pytest.skip("CuPy works here")
    with pytest.raises(BackendUnavailableError, match="cupy"):
        K.random_bits(0, 0, 4, backend="cupy")
