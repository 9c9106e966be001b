"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(_blocks()) >= 2


@pytest.mark.parametrize("i", range(len(_blocks())))
def test_readme_example_runs(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_blocks()[i], f"README block {i}", "exec"), {})


def test_ci_runs_the_readme_test_command_verbatim():
    cmds = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)
    assert len(cmds) == 2, "README must give exactly two set-up commands"
    test_cmd = next(c for c in cmds if "pytest" in c)
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci
