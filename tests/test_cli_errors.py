"""The command line under hostile input (issue 18; decisions.md "Errors and the CLI").

Every command found by ``lrmath.registry.commands()`` (so commands merged later are covered)
is run in-process with bad arguments: unknown options, negative/NaN/non-numeric numbers,
missing files, folders, empty and garbage files, truncated quantized files. Each run must

* exit 1 (failure) or 2 (usage), never 0 on refused input and never with a traceback;
* print exactly one line, ``lrmath: error: ...``, on stderr;
* leave every input file byte-for-byte unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
from pathlib import Path

import numpy as np
import pytest

from lrmath import registry
from lrmath.cli import main

COMMANDS = sorted(registry.commands())
# commands whose valid run is the whole job on the default model: only refused input is tried
VALID_POSITIONALS = {"plan": ["64", "32", "4"], "lotr-plan": ["64", "32", "32", "4", "3"]}
LIMIT_S = 60  # a refused argument must fail fast; running the whole job means it was accepted


class _Slow(BaseException):
    pass


def _run(argv, capsys):
    def _alarm(*_):
        raise _Slow()

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(LIMIT_S)
    try:
        rc = main(argv)
    except _Slow:
        pytest.fail(f"lrmath {' '.join(argv)} ran {LIMIT_S} s: hostile input accepted?")
    except SystemExit as exc:  # must not happen: main returns the status
        pytest.fail(f"lrmath {' '.join(argv)} raised SystemExit({exc.code})")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _assert_clean_error(argv, rc, err, codes=(1, 2)):
    assert rc in codes, f"lrmath {' '.join(argv)} exited {rc}; stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("lrmath: error: ")]
    assert len(errs) == 1 and errs[0] == lines[-1], f"expected one 'lrmath: error:' line, got {lines!r}"


def _digest(paths):
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths if Path(p).is_file()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    from safetensors.numpy import save_file

    from lrmath import kashin

    rng = np.random.default_rng(0)
    dense = d / "dense.safetensors"
    save_file({"l.weight": rng.standard_normal((16, 64)).astype(np.float32), "l.bias": np.zeros(16, np.float32)}, str(dense))
    big = d / "big.safetensors"
    save_file({"l.weight": (rng.standard_normal((16, 64)) * 1e6).astype(np.float32)}, str(big))
    nan = d / "nan.safetensors"
    save_file({"l.weight": np.full((16, 64), np.nan, np.float32)}, str(nan))
    q = d / "q.safetensors"
    kashin.quantize(rng.standard_normal((16, 64)).astype(np.float32), 2, block=32).save(q)
    trunc = d / "trunc.safetensors"
    trunc.write_bytes(q.read_bytes()[:-7])
    empty = d / "empty.safetensors"
    empty.write_bytes(b"")
    garbage = d / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 40)
    sub = d / "folder"
    sub.mkdir()
    return {"dir": d, "dense": dense, "big": big, "nan": nan, "q": q, "trunc": trunc, "empty": empty,
            "garbage": garbage, "folder": sub}


def _parser(cmd):
    p = argparse.ArgumentParser(prog=f"lrmath {cmd}")
    registry.commands()[cmd].configure(p)
    return p


def _positionals(cmd, files):
    if cmd in VALID_POSITIONALS:
        return list(VALID_POSITIONALS[cmd])
    out = []
    for a in _parser(cmd)._actions:
        if a.option_strings or a.dest == "help":
            continue
        out.append("8" if a.type is int else str(files["dense"]))
    return out


def _required_options(cmd, files):
    out = []
    for a in _parser(cmd)._actions:
        if a.option_strings and a.required:
            out += [a.option_strings[0], str(files["dir"] / f"out-{cmd}.safetensors")]
    return out


@pytest.mark.parametrize("cmd", COMMANDS)
def test_unknown_option_is_a_usage_error(cmd, capsys):
    argv = [cmd, "--no-such-option"]
    rc, _, err = _run(argv, capsys)
    _assert_clean_error(argv, rc, err, codes=(2,))


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_exits_zero(cmd, capsys):
    rc, out, _ = _run([cmd, "--help"], capsys)
    assert rc == 0 and "usage" in out


def _numeric_actions(cmd):
    for a in _parser(cmd)._actions:
        if a.type in (int, float) and a.dest != "help":
            yield a


@pytest.mark.parametrize("cmd", COMMANDS)
def test_hostile_numbers(cmd, files, capsys):
    """Every numeric argument (positional or option) refuses -1, 'nan', 'x' and 1e400-like junk."""
    before = _digest(files.values())
    base = _positionals(cmd, files)
    pos_index = 0
    for a in _numeric_actions(cmd):
        for bad in ("-1", "nan", "x", "1e999"):
            if a.type is int and bad == "nan":
                continue
            if a.option_strings:
                argv = [cmd, *base, *_required_options(cmd, files), a.option_strings[0], bad]
            else:
                pos = list(base)
                pos[pos_index] = bad
                argv = [cmd, *pos, *_required_options(cmd, files)]
            rc, _, err = _run(argv, capsys)
            _assert_clean_error(argv, rc, err)
        if not a.option_strings:
            pos_index += 1
    assert _digest(files.values()) == before


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("kind", ["missing", "folder", "empty", "garbage", "trunc"])
def test_hostile_input_paths(cmd, kind, files, capsys):
    """Every positional that takes a file refuses missing/folder/empty/garbage/truncated input."""
    actions = [a for a in _parser(cmd)._actions if not a.option_strings and a.type is None and a.dest != "help"]
    if not actions:
        pytest.skip(f"{cmd} takes no file argument")
    before = _digest(files.values())
    bad = str(files["dir"] / "no-such-file.safetensors") if kind == "missing" else str(files[kind])
    argv = [cmd, bad, *_required_options(cmd, files)]
    rc, _, err = _run(argv, capsys)
    _assert_clean_error(argv, rc, err)
    assert _digest(files.values()) == before


def _writing_commands():
    return [c for c in COMMANDS if any(a.option_strings and "-o" in a.option_strings for a in _parser(c)._actions)]


@pytest.mark.parametrize("cmd", _writing_commands())
def test_output_that_is_the_input_is_refused(cmd, files, tmp_path, capsys):
    src = tmp_path / "in.safetensors"
    src.write_bytes((files["q"] if cmd == "dequantize" else files["dense"]).read_bytes())
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    before = src.read_bytes()
    for out in (src, link, tmp_path / "." / "in.safetensors"):
        argv = [cmd, str(src), "-o", str(out)]
        rc, _, err = _run(argv, capsys)
        _assert_clean_error(argv, rc, err, codes=(2,))
        assert "overwrite" in err
        assert src.read_bytes() == before
    # explicit --overwrite does replace it (atomically)
    rc, _, err = _run([cmd, str(src), "-o", str(src), "--overwrite"], capsys)
    assert rc == 0, err
    assert src.read_bytes() != before


@pytest.mark.parametrize("cmd", _writing_commands())
@pytest.mark.parametrize("where", ["folder", "missing-folder"])
def test_bad_output_paths(cmd, where, files, capsys):
    src = files["q"] if cmd == "dequantize" else files["dense"]
    out = files["folder"] if where == "folder" else files["dir"] / "nope" / "x.safetensors"
    argv = [cmd, str(src), "-o", str(out)]
    rc, _, err = _run(argv, capsys)
    _assert_clean_error(argv, rc, err, codes=(1,))


@pytest.mark.parametrize("argv,code", [
    (["quantize", "{dense}", "-o", "{out}", "--bits", "9"], 2),
    (["quantize", "{dense}", "-o", "{out}", "--bits", "1"], 2),
    (["quantize", "{dense}", "-o", "{out}", "--block", "7"], 2),
    (["quantize", "{dense}", "-o", "{out}", "--basis", "bogus"], 2),
    (["quantize", "{dense}", "-o", "{out}", "--iters", "-1"], 2),
    (["quantize", "{big}", "-o", "{out}"], 1),           # scales beyond float16
    (["quantize", "{nan}", "-o", "{out}"], 1),
    (["dequantize", "{q}", "-o", "{out}", "--dtype", "int8"], 2),
    (["dequantize", "{dense}", "-o", "{out}"], 1),       # not a quantized file
    (["plan", "0", "4", "2"], 2),
    (["plan", "64", "32", "40"], 2),                     # r > min(m, n)
    (["plan", "64", "32", "4", "--tokens", "0"], 2),
    (["plan", "64", "32", "4", "--memory-budget", "0"], 2),
    (["plan", "64", "32", "4", "--objective", "time", "--backend", "cuda"], 1),  # no GPU here
    (["plan", "64", "32", "4", "--objective", "time", "--backend", "bogus"], 2),
])
def test_named_user_errors(argv, code, files, capsys):
    out = files["dir"] / "named-out.safetensors"
    argv = [a.format(out=out, **{k: v for k, v in files.items()}) for a in argv]
    if "cuda" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present: the time objective can run on cuda")
    before = _digest(files.values())
    rc, _, err = _run(argv, capsys)
    _assert_clean_error(argv, rc, err, codes=(code,))
    assert _digest(files.values()) == before
    assert not out.exists()


def test_dequantize_writes_real_values_in_the_requested_dtype(files, tmp_path, capsys):
    from safetensors.numpy import load_file

    from lrmath.kashin import KashinQuantized

    out = tmp_path / "d.safetensors"
    rc, _, err = _run(["dequantize", str(files["q"]), "-o", str(out), "--dtype", "float16"], capsys)
    assert rc == 0, err
    W = load_file(str(out))["weight"]
    assert W.dtype == np.float16
    ref = KashinQuantized.load(files["q"]).dequantize(np.float32)
    np.testing.assert_allclose(W.astype(np.float32), ref, rtol=2**-10, atol=2**-14 * np.abs(ref).max())
    assert np.abs(W).max() > 0  # not zeros


def test_verbose_shows_the_traceback(files, capsys):
    argv = ["-v", "quantize", str(files["dir"] / "missing.safetensors"), "-o", str(files["dir"] / "x.safetensors")]
    rc, _, err = _run(argv, capsys)
    assert rc == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("lrmath: error: ")


def test_subprocess_error_line_and_status(files):
    """Through the real entry point: stderr is one line, stdout empty, status 2."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "lrmath", "plan", "0", "4", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("lrmath: error: ")
