"""Model-level metrics: perplexity of a causal LM, STS Spearman of a sentence encoder.

Decisions
---------
* **Perplexity** (``shared/decisions.md``): the text is tokenized once (a list of
  documents is joined with blank lines), cut to ``max_tokens`` (default 8,192), and
  scored in windows of ``window`` tokens (default 512) that start every ``stride`` tokens
  (default ``stride = window``: non-overlapping). Each window is one forward pass with no
  context from earlier windows; it scores the tokens no earlier window scored, except its
  first token, which has no context inside the window. So with non-overlapping windows
  ``n - n_windows`` tokens are scored, and with ``stride < window`` every token after the
  first is scored once, with ``window - stride`` tokens of extra context. The result is
  the token-weighted mean NLL (natural log) over all scored tokens, and ``ppl = exp(NLL)``
  (not a mean of per-window perplexities). Logits are taken in float32.
* **STS** (the sentence-transformers recipe of all-MiniLM-L6-v2): mean pooling of the
  last hidden states over real tokens, cosine similarity of the two sentences, Spearman
  rank correlation with the gold scores (ties get average ranks), times 100.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from .._progress import progress
from ..backend import check_positive_int
from ..errors import EmptyInputError, ShapeError

__all__ = ["perplexity", "Perplexity", "sts_spearman", "spearman", "token_ids"]


@dataclass
class Perplexity:
    """Result of :func:`perplexity`; ``float(result)`` is the perplexity."""

    ppl: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # tokens scored
    text_tokens: int  # tokens of the (cut) text
    windows: int
    window: int
    stride: int

    def __float__(self) -> float:
        return self.ppl

    def to_dict(self) -> dict:
        return asdict(self)


def token_ids(text_or_ids: Any, tokenizer: Any = None) -> np.ndarray:
    """1-D int64 token ids of a text (str or list of documents) or of given ids.

    A list of strings is joined with ``"\\n\\n"``; the tokenizer is called with
    ``add_special_tokens=False`` (windows add no BOS either).
    """
    if isinstance(text_or_ids, str) or (
        isinstance(text_or_ids, (list, tuple)) and text_or_ids and all(isinstance(t, str) for t in text_or_ids)
    ):
        if tokenizer is None:
            raise TypeError("perplexity of a text needs tokenizer=... (or pass token ids)")
        text = text_or_ids if isinstance(text_or_ids, str) else "\n\n".join(text_or_ids)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = text_or_ids
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ShapeError(f"token ids must be a 1-D integer sequence, got shape {ids.shape} dtype {ids.dtype}")
    return ids.astype(np.int64)


def perplexity(
    model: Any,
    text_or_ids: Any,
    *,
    tokenizer: Any = None,
    window: int = 512,
    stride: int | None = None,
    max_tokens: int | None = 8192,
    progress_bar: bool | None = None,
) -> Perplexity:
    """Perplexity of a causal LM on a text, from token-weighted NLL over windows.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM: ``model(input_ids=(1, w)).logits`` has shape (1, w, vocab)
        (any transformers ``*ForCausalLM``).
    text_or_ids : str, list of str, or 1-D int sequence / tensor
        The text (tokenized with ``tokenizer``) or its token ids.
    tokenizer : transformers tokenizer, optional
        Needed for text.
    window : int
        Tokens per forward pass (default 512).
    stride : int, optional
        Start-to-start distance of windows, 1..window; default ``window``
        (non-overlapping). See the module notes for which tokens are scored.
    max_tokens : int or None
        Use the first ``max_tokens`` tokens (default 8,192); None for all.
    progress_bar : bool, optional

    Returns
    -------
    Perplexity
        ``ppl = exp(sum NLL / tokens scored)``, with the counts.

    Raises
    ------
    lrmath.errors.ShapeError
        The (cut) text is shorter than one window, or ids are not 1-D integers.
    """
    import torch

    window = check_positive_int(window, "window", minimum=2)
    stride = window if stride is None else check_positive_int(stride, "stride", maximum=window)
    ids = token_ids(text_or_ids, tokenizer)
    if max_tokens is not None:
        ids = ids[: check_positive_int(max_tokens, "max_tokens")]
    n = ids.size
    if n < window:
        raise ShapeError(
            f"the text has {n} tokens{' (after max_tokens)' if max_tokens is not None else ''}, fewer than one "
            f"window of {window}; give more text or a smaller --window"
        )
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] + window < n:  # a last, shorter window reaches the end of the text
        starts.append(starts[-1] + stride)
    device = next(model.parameters()).device
    total, scored, scored_until = 0.0, 0, 0
    with torch.inference_mode():
        for begin in progress(starts, desc="perplexity", enabled=progress_bar):
            end = min(begin + window, n)
            first = max(scored_until, begin + 1)  # first position this window scores
            if first >= end:
                continue
            chunk = torch.from_numpy(ids[begin:end]).to(device)[None]
            logits = model(input_ids=chunk).logits[0].float()
            # position p is predicted by the logits at p - 1
            pred = logits[first - begin - 1 : end - begin - 1]
            target = chunk[0, first - begin : end - begin]
            total += float(torch.nn.functional.cross_entropy(pred, target, reduction="sum"))
            scored += end - first
            scored_until = end
    nll = total / scored
    return Perplexity(ppl=math.exp(nll), nll=nll, tokens=scored, text_tokens=n, windows=len(starts),
                      window=window, stride=stride)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.arange(1, x.size + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson correlation of average ranks (ties averaged)."""
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if x.size != y.size:
        raise ShapeError(f"spearman: {x.size} vs {y.size} values")
    if x.size < 2:
        raise EmptyInputError(f"spearman needs at least 2 pairs, got {x.size}")
    rx, ry = _ranks(x) - (x.size + 1) / 2, _ranks(y) - (y.size + 1) / 2
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / den if den else float("nan")


def sts_spearman(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str, float]],
    *,
    batch_size: int = 64,
    max_length: int = 256,
    progress_bar: bool | None = None,
) -> float:
    """STS score of a sentence encoder: Spearman x 100 of cosine vs gold similarity.

    Parameters
    ----------
    model : torch.nn.Module
        An encoder returning last hidden states (b, s, d) (``.last_hidden_state`` of a
        transformers output, or a tensor).
    tokenizer : transformers tokenizer
    pairs : sequence of (str, str, float)
        ``(sentence_a, sentence_b, gold score)``, e.g. :func:`lrmath.data.stsb`.
    batch_size, max_length : int
        Sentences per forward pass; truncation length (256, the model's ``max_seq_length``).

    Returns
    -------
    float
        ``100 * spearman(cos(u_i, v_i), score_i)``; mean pooling over real tokens.
    """
    import torch

    from ..torch.model import mean_pool

    pairs = list(pairs)
    if len(pairs) < 2:
        raise EmptyInputError(f"sts_spearman needs at least 2 pairs, got {len(pairs)}")
    batch_size = check_positive_int(batch_size, "batch_size")
    sentences = [a for a, _, _ in pairs] + [b for _, b, _ in pairs]
    # batches of similar length waste little compute on padding (padding does not change
    # an embedding: padding keys get zero attention and are left out of the mean)
    order = np.argsort([len(s) for s in sentences], kind="stable")
    device = next(model.parameters()).device
    embs = []
    with torch.inference_mode():
        for i in progress(range(0, len(sentences), batch_size), desc="sts", enabled=progress_bar):
            batch = [sentences[j] for j in order[i : i + batch_size]]
            enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            mask = enc["attention_mask"].to(device)
            out = model(input_ids=enc["input_ids"].to(device), attention_mask=mask)
            embs.append(mean_pool(out, mask, normalize=True).float().cpu())
    e = np.empty((len(sentences), embs[0].shape[1]), np.float64)
    e[order] = torch.cat(embs).numpy()
    u, v = e[: len(pairs)], e[len(pairs) :]
    cos = np.sum(u * v, axis=1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
    return 100.0 * spearman(cos, [s for _, _, s in pairs])
