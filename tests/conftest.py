"""Suite-wide set-up: hypothesis profiles, the simulator switch, and the backend axis.

* ``NUMBA_ENABLE_CUDASIM=1`` is set here, before anything imports numba, when it is
  unset and no GPU is present, so Numba kernels run in the CUDA simulator.
* Hypothesis profiles: ``ci`` (derandomized, 20 examples, no deadline), ``dev`` (50
  examples), ``thorough`` (500). ``HYPOTHESIS_PROFILE`` picks one; under ``CI=true``
  the default is ``ci``.
* The ``xp`` fixture runs a test over numpy, array-api-strict, torch-cpu and cupy.
  Without a GPU the cupy case skips with a reason. Under ``CI=true`` any *other*
  missing backend is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil


def _has_gpu() -> bool:
    # nvidia-smi or /dev/nvidia0 without importing CuPy (which takes seconds to probe)
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


GPU = _has_gpu()
if "NUMBA_ENABLE_CUDASIM" not in os.environ and not GPU:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
# One BLAS/OpenMP thread per test process: with pytest -n 2 on 2 cores, threaded BLAS and
# torch oversubscribe the cores (an SVD-heavy test measured 5 s -> 60-230 s). Set before
# NumPy/torch load their thread pools; threadpoolctl below covers pools already loaded.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LRMATH_SCALE", "ci")
os.environ.setdefault("LRMATH_PROGRESS", "0")

import importlib  # noqa: E402
import importlib.util  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

try:
    from threadpoolctl import threadpool_limits

    threadpool_limits(int(os.environ["OMP_NUM_THREADS"]))
except ImportError:  # pragma: no cover - ships with scikit-learn (test extra)
    pass

settings.register_profile(
    "ci", derandomize=True, max_examples=20, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_profile = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "dev")
settings.load_profile(_profile)

IN_CI = os.environ.get("CI") == "true"
BACKENDS = ("numpy", "array_api_strict", "torch", "cupy")


def _cupy_ok() -> tuple[bool, str]:
    if not GPU:
        return False, "no CUDA GPU on this machine"
    try:
        import cupy as cp

        cp.zeros(1)
        return True, ""
    except Exception as exc:  # noqa: BLE001
        return False, f"CuPy unusable: {type(exc).__name__}: {exc}"


def require_backend(name: str):
    """Import backend ``name`` or skip (fail under CI=true, except CuPy without a GPU)."""
    if name == "cupy":
        ok, why = _cupy_ok()
        if not ok:
            pytest.skip(why)
        import cupy

        return cupy
    modname = {"torch": "torch", "array_api_strict": "array_api_strict", "numpy": "numpy"}[name]
    try:
        mod = importlib.import_module(modname)
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"backend {name} is required under CI=true: {exc}")
        pytest.skip(f"{name} not installed: {exc}")
    if name == "numpy":
        return np
    if name == "torch":
        import array_api_compat.torch as xpt

        return xpt
    return mod


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import sys

    if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    yield


@pytest.fixture(params=BACKENDS)
def xp(request):
    """Array namespace of each backend (numpy, array-api-strict, torch-cpu, cupy)."""
    return require_backend(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_report_header(config):
    return [
        f"lrmath: GPU={'yes' if GPU else 'no'}, NUMBA_ENABLE_CUDASIM={os.environ.get('NUMBA_ENABLE_CUDASIM')}, "
        f"hypothesis profile={_profile}, CI={IN_CI}"
    ]
