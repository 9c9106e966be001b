"""The command line: info, tour listing, JSON output, plug-in discovery."""

from __future__ import annotations

import json
import subprocess
import sys

from lrmath import registry
from lrmath.cli import main


def test_info_json(capsys):
    assert main(["--json", "info"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backends"]["numpy"]["available"]
    assert "lrmath" in data


def test_tour_list_and_model_section(capsys):
    assert main(["tour", "--list"]) == 0
    out = capsys.readouterr().out
    assert "model" in out
    assert main(["--json", "tour", "--only", "model"]) == 0
    data = json.loads(capsys.readouterr().out)
    layers = data["model"]["linear_layers"]
    assert len(layers) >= 36 and all(len(l["shape"]) == 2 for l in layers)


def test_unknown_section(capsys):
    assert main(["tour", "--only", "no-such-section"]) == 2


def test_plugins_load_without_errors():
    failed = registry.discover()
    assert failed == {}, failed
    assert {"info", "tour"} <= set(registry.commands())


def test_console_entry_point_and_module():
    r = subprocess.run([sys.executable, "-m", "lrmath", "--version"], capture_output=True, text=True, check=True)
    from lrmath import __version__

    assert r.stdout.strip() == __version__
