"""Fuzz every public function of lrmath with hostile input (issue 18).

The promise (README, decisions.md "Errors and the CLI"): bad input raises a subclass of
:class:`lrmath.LrmathError` that is also the matching built-in; never an incidental
``IndexError``/``ZeroDivisionError``/``LinAlgError``/``RuntimeError``, never a silent NaN.

Targets are discovered by walking every public ``__all__`` of lrmath
(``tests/_fuzz_cases.public_callables``), so modules merged later are covered without an
edit here. Each target gets one valid base call; the tests replace one argument at a time
with a hostile value (bad shapes, dtypes int/bool/complex/object/fp16/bf16, NaN/Inf/1e300,
empty, 0-d, wrong Python types) and fail on

* any exception that is not an ``LrmathError`` (``AssertionError`` only for the assertion helpers),
* a non-finite number in the result (outside the pass-through conversions),
* an input array changed in place.

``test_fuzz_sweep`` runs a fixed list of hostile values over every parameter;
``test_fuzz_random`` draws from hypothesis strategies (``tests/strategies.py``): a few examples
under the ``ci`` profile, hundreds under ``HYPOTHESIS_PROFILE=thorough``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import signal
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrmath.errors import LrmathError

from . import _fuzz_cases as fc
from .strategies import BAD_SCALARS, bad_arrays_list, bad_file_bytes, bad_values

TARGETS = fc.public_callables()
IDS = [q for q, _ in TARGETS]


def _nonfinite(out, depth: int = 0) -> str | None:
    """Where ``out`` holds NaN/Inf (a path string), or None."""
    if depth > 4 or out is None:
        return None
    if isinstance(out, (float, np.floating)):
        return "" if not np.isfinite(out) else None
    if isinstance(out, np.ndarray):
        if out.dtype.kind in "fc" or out.dtype.name == "bfloat16":
            a = out.astype(np.complex128 if out.dtype.kind == "c" else np.float64)
            return "" if not np.all(np.isfinite(a)) else None
        return None
    mod = type(out).__module__
    if mod.startswith("torch"):
        import torch

        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return "" if not bool(torch.isfinite(out.detach()).all()) else None
        if isinstance(out, torch.nn.Module):
            for n, p in list(out.named_parameters())[:64]:
                if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all()):
                    return f".{n}"
        return None
    if isinstance(out, dict):
        items = list(out.items())[:64]
    elif isinstance(out, (list, tuple)):
        items = list(enumerate(out))[:64]
    elif dataclasses.is_dataclass(out):
        items = [(f.name, getattr(out, f.name, None)) for f in dataclasses.fields(out)]
    elif mod.startswith("lrmath") and hasattr(out, "__dict__"):
        items = list(vars(out).items())[:64]
    else:
        return None
    for k, v in items:
        r = _nonfinite(v, depth + 1)
        if r is not None:
            return f"[{k!r}]{r}"
    return None


def _fingerprint(values) -> list:
    out = []
    for v in values:
        if isinstance(v, np.ndarray) and v.dtype != object:
            out.append(hashlib.sha256(np.ascontiguousarray(v).view(np.uint8).tobytes() if v.size else b"").hexdigest())
        else:
            out.append(None)
    return out


def _short(v) -> str:
    if isinstance(v, np.ndarray):
        return f"array(shape={v.shape}, dtype={v.dtype})"
    r = repr(v)
    return r if len(r) < 60 else r[:57] + "..."


class _Hang(BaseException):
    """Raised by the alarm when one call runs too long (an unbounded loop or size)."""


CALL_LIMIT_S = float(os.environ.get("LRMATH_FUZZ_CALL_LIMIT", "10"))


def _alarm(signum, frame):
    raise _Hang()


def check_call(qual, obj, args, kwargs, what=""):
    """Call ``obj(*args, **kwargs)``; return a failure message or None."""
    flat = list(args) + list(kwargs.values())
    before = _fingerprint(flat)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CALL_LIMIT_S)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = obj(*args, **kwargs)
    except _Hang:
        return f"{qual}({what}) ran longer than {CALL_LIMIT_S:g} s (an unbounded size or iteration count?)"
    except LrmathError:
        out = None
    except AssertionError:
        if qual not in fc.ASSERTIONS:
            return f"{qual}({what}) raised AssertionError"
        out = None
    except Exception as exc:  # noqa: BLE001 - exactly what the fuzz test looks for
        return f"{qual}({what}) raised {type(exc).__name__}: {str(exc)[:160]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if qual not in fc.NAN_PASSTHROUGH:
        where = _nonfinite(out)
        if where is not None:
            return f"{qual}({what}) returned NaN/Inf at result{where}"
    after = _fingerprint(flat)
    if before != after:
        return f"{qual}({what}) changed an input array in place"
    return None


def _base(qual, obj):
    if isinstance(obj, Exception):
        pytest.fail(f"{qual} does not import: {obj!r}")
    try:
        b = fc.base_call(qual, obj)
    except ImportError as exc:
        pytest.skip(f"optional dependency missing: {exc}")
    if b is None:
        pytest.skip("no generic base call (listed in tests/_fuzz_cases.CASES with None: constructed from library objects)")
    return b


THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough" or os.environ.get("LRMATH_FUZZ") == "full"
# seconds of sweep per target in the default run (the thorough run has no budget); the values
# are ordered so the classes of bad input come first
BUDGET_S = float(os.environ.get("LRMATH_FUZZ_BUDGET", "0" if THOROUGH else "1.5"))
_CORE_SCALARS = (2.5, True, None, -1, "bogus", float("nan"), 2**62, 1 + 2j, [1, 2])


def _sweep_values(base_value):
    arrays = bad_arrays_list(base_value if isinstance(base_value, np.ndarray) else None)
    if THOROUGH:
        return list(BAD_SCALARS) + arrays
    core_arrays = [a for a in arrays if isinstance(a, np.ndarray) and (
        a.dtype.kind in "cObi" or a.ndim == 0 or a.size == 0 or not np.all(np.isfinite(a.astype(np.float64)))
        or np.abs(a.astype(np.float64)).max(initial=0) > 1e200)]
    return list(_CORE_SCALARS) + core_arrays


@pytest.fixture(autouse=True)
def _in_a_scratch_folder(tmp_path, monkeypatch):
    """Hostile strings such as "bogus" are valid relative paths: writers given one (atomic_write with a
    no-op writer, save with an empty model) rightly create that file, so run every case in a scratch cwd."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("qual,obj", TARGETS, ids=IDS)
def test_fuzz_sweep(qual, obj):
    args, kwargs = _base(qual, obj)
    failures = []
    msg = check_call(qual, obj, args, kwargs, "base call")
    if msg:
        failures.append(msg)
    t0 = time.perf_counter()
    params = fc.parameters(obj)
    cur = dict(zip([q.name for q in params], args)) | kwargs
    values = {p.name: _sweep_values(cur.get(p.name)) for p in params}
    # interleave the parameters, so that a time budget still reaches every one of them
    order = [(p, values[p.name][i]) for i in range(max(map(len, values.values()), default=0))
             for p in params if i < len(values[p.name])]
    for p, v in order:
        if BUDGET_S and time.perf_counter() - t0 > BUDGET_S:
            break
        a, k = fc.replace_arg(obj, args, kwargs, p, v)
        msg = check_call(qual, obj, a, k, f"{p.name}={_short(v)}")
        if msg:
            failures.append(msg)
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures[:40])


@pytest.mark.parametrize("qual,obj", TARGETS, ids=IDS)
@settings(max_examples=5)
@given(data=st.data())
def test_fuzz_random(qual, obj, data):
    args, kwargs = _base(qual, obj)
    params = fc.parameters(obj)
    if not params:
        return
    # one or two arguments replaced at once
    chosen = data.draw(st.lists(st.sampled_from(params), min_size=1, max_size=2, unique_by=lambda p: p.name))
    what = []
    for p in chosen:
        cur = dict(zip([q.name for q in params], args)) | kwargs
        v = data.draw(bad_values(cur.get(p.name) if isinstance(cur.get(p.name), np.ndarray) else None))
        args, kwargs = fc.replace_arg(obj, args, kwargs, p, v)
        what.append(f"{p.name}={_short(v)}")
    msg = check_call(qual, obj, args, kwargs, ", ".join(what))
    assert msg is None, msg


METHODS = fc.method_targets()


def _torch_tensor_values(base):
    import torch

    t = base
    vals = [t.double(), t.half(), t.bfloat16(), t.long(), t > 0, t[0], t[:, :3], torch.empty(0, t.shape[-1]),
            t.reshape(-1)[:1].reshape(()), t * float("nan"), t * 1e300, t.to(torch.complex64)]
    return vals


@pytest.mark.parametrize("qual,factory", METHODS, ids=[q for q, _ in METHODS])
def test_fuzz_methods(qual, factory):
    """Methods reached through objects (operators, quantized matrices, accumulators, layers)."""
    obj, args, kwargs = factory()
    fn = obj if not hasattr(obj, "forward") else obj  # torch modules are called, not .forward
    failures = []
    msg = check_call(qual, fn, args, kwargs, "base call")
    if msg:
        failures.append(msg)
    t0 = time.perf_counter()
    params = fc.parameters(obj.forward if hasattr(obj, "forward") else obj)
    for i, p in enumerate(params):
        base = (args[i] if i < len(args) else kwargs.get(p.name))
        vals = list(_CORE_SCALARS) + (_torch_tensor_values(base) if type(base).__module__.startswith("torch")
                                      else _sweep_values(base))
        for v in vals:
            if BUDGET_S and time.perf_counter() - t0 > 4 * BUDGET_S:
                break
            a, k = list(args), dict(kwargs)
            if i < len(a):
                a[i] = v
            else:
                k[p.name] = v
            fresh, _, _ = factory()
            msg = check_call(qual, fresh, tuple(a), k, f"{p.name}={_short(v)}")
            if msg and "returned NaN" in msg and hasattr(fresh, "forward") and _nonfinite(v) is not None:
                msg = None  # torch layers propagate NaN/Inf inputs like nn.Linear (no per-step device sync)
            if msg:
                failures.append(msg)
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures[:40])


_GOOD_FILE = None


def _good_file_bytes():
    global _GOOD_FILE
    if _GOOD_FILE is None:
        import pathlib

        _GOOD_FILE = pathlib.Path(fc._kashin_file()).read_bytes()
    return _GOOD_FILE


@settings(max_examples=25)
@given(data=st.data())
def test_fuzz_quantized_file_bytes(data, tmp_path_factory):
    """Corrupted files (truncation, bit flips, garbage): refused with an LrmathError, or (only when
    the damage missed everything that is decoded) loaded to exactly the original matrix."""
    from lrmath.kashin import KashinQuantized, load_entries

    good = _good_file_bytes()
    blob = data.draw(bad_file_bytes(good))
    p = tmp_path_factory.mktemp("bytes") / "f.safetensors"
    p.write_bytes(blob)
    ref = KashinQuantized.load(fc._kashin_file(), "w").dequantize()
    for fn in (lambda: KashinQuantized.load(p, "w").dequantize(), lambda: load_entries(p)["w"].dequantize()):
        try:
            out = fn()
        except LrmathError:
            continue
        np.testing.assert_array_equal(out, ref)
    assert p.read_bytes() == blob  # reading never writes


def test_every_public_callable_is_behind_the_boundary():
    """By construction: every discovered entry point carries lrmath.backend.public's wrapper."""
    missing = [q for q, o in TARGETS if not isinstance(o, Exception) and not getattr(o, "__lrmath_public__", False)
               and not callable(getattr(o, "terms", None)) and not hasattr(o, "terms")]
    assert not missing, missing


def test_discovery_finds_every_package():
    """The walk reaches every method package, so new ones are fuzzed automatically."""
    mods = {q.rsplit(".", 1)[0] for q in IDS}
    for pkg in ("lrmath.backend", "lrmath.ops", "lrmath.rng", "lrmath.kashin", "lrmath.lotr", "lrmath.randmm",
                "lrmath.runlora", "lrmath.sparsegrad", "lrmath.torch"):
        assert any(m == pkg or m.startswith(pkg + ".") for m in mods), pkg
    assert len(TARGETS) >= 100


def test_skip_list_is_justified():
    for name, why in fc.SKIP.items():
        assert isinstance(why, str) and len(why) > 15, name
