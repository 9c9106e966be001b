"""Array interop: namespaces, conversion (zero-copy where possible), the traps, validation."""

from __future__ import annotations

import numpy as np
import pytest

import lrmath
from lrmath import backend as B
from lrmath.errors import DeviceError, DTypeError, EmptyInputError, LrmathError, NonFiniteError, ShapeError


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, lrmath; lrmath.ops; lrmath.rng; print('torch' in sys.modules, 'cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_error_hierarchy():
    assert issubclass(ShapeError, ValueError) and issubclass(ShapeError, LrmathError)
    assert issubclass(DTypeError, TypeError)
    assert issubclass(lrmath.FormatError, ValueError)
    assert issubclass(lrmath.RankError, ShapeError)


def test_namespace_mixing_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(DeviceError, match="mix"):
        B.array_namespace(np.ones(2), torch.ones(2))


def test_numpy_torch_zero_copy_roundtrip():
    torch = pytest.importorskip("torch")
    a = np.arange(12.0).reshape(3, 4)
    t = B.convert(a, "torch")
    assert t.data_ptr() == a.ctypes.data  # shared memory
    back = B.to_numpy(t)
    assert back.ctypes.data == a.ctypes.data
    # requires_grad and conj tensors export after detach/resolve
    g = torch.ones(3, requires_grad=True)
    assert B.to_numpy(g).tolist() == [1.0, 1.0, 1.0]


def test_negative_strides_and_readonly_are_copied():
    pytest.importorskip("torch")
    a = np.arange(6.0)[::-1]
    t = B.convert(a, "torch")  # would abort the process through DLPack
    assert t.tolist() == a.tolist()
    ro = np.arange(4.0)
    ro.setflags(write=False)
    t = B.convert(ro, "torch")
    t += 1
    assert ro.tolist() == [0.0, 1.0, 2.0, 3.0]  # the read-only original is untouched


def test_bfloat16_roundtrip():
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    t = torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16)
    a = B.to_numpy(t)
    assert a.dtype == ml_dtypes.bfloat16
    t2 = B.convert(a, "torch")
    assert t2.dtype == torch.bfloat16 and torch.equal(t, t2)


def test_compute_policy(xp):
    if not hasattr(xp, "float16"):
        pytest.skip(f"{xp.__name__} has no float16")
    x = xp.asarray(np.ones((2, 2), dtype=np.float16))
    _, xc, dt = B.as_compute(x)
    assert "float32" in str(xc.dtype)
    y = B.restore(xp, xc * 2, dt)
    assert "float16" in str(y.dtype)


def test_like_returns_callers_kind(xp):
    ref = xp.asarray(np.zeros(3))
    out = B.like(np.array([1.0, 2.0, 3.0]), ref)
    assert B.backend_name(out) == B.backend_name(ref)


@pytest.mark.parametrize(
    "bad, err, match",
    [
        (np.ones((2, 2, 2)), ShapeError, "2-D"),
        (np.ones((2, 2), dtype=np.int32), DTypeError, "floating"),
        (np.ones((2, 2), dtype=np.complex64), DTypeError, "floating"),
        (np.array([[1.0, np.nan]]), NonFiniteError, "1 NaN"),
        (np.array([[1.0, np.inf]]), NonFiniteError, "NaN/Inf"),
        (np.ones((0, 3)), EmptyInputError, "empty"),
    ],
)
def test_check_array_errors(bad, err, match):
    with pytest.raises(err, match=match):
        B.check_array(bad, "W", ndim=2)


def test_check_array_shape():
    with pytest.raises(ShapeError, match=r"\(3, \*\)"):
        B.check_array(np.ones((2, 2)), "A", shape=(3, None))
    with pytest.raises(DTypeError):
        B.check_array([1.0, 2.0], "x")


def test_check_finite_torch():
    torch = pytest.importorskip("torch")
    with pytest.raises(NonFiniteError):
        B.check_array(torch.tensor([1.0, float("nan")]), "x")


def test_available_backends_reports():
    info = B.available_backends()
    assert info["numpy"]["available"] and "version" in info["numpy"]
    assert "cupy" in info
