"""Classification tasks for the fine-tuning table: loading, seeded splits, tokenization.

Splits (decisions.md, "Real models and data"): ``mr-polarity`` -- the movie-review
sentences with a non-zero mean score, label = sign, shuffled with the split seed, then
8,000 train / 1,000 validation / the rest test; ``trec`` -- the question-classification
lines deduplicated on the question text (first occurrence kept), 6 coarse classes,
shuffled, then 80 / 10 / 10 %. The split seed is fixed (0) and independent of the
training seed, so every method and seed sees the same test set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from ..backend import public

__all__ = ["TASKS", "Task", "load_task", "make_task", "split_indices"]

#: Task names accepted by :func:`load_task`.
TASKS = ("mr-polarity", "trec")
TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


@dataclass
class Task:
    """Texts and integer labels of one task, split into train / validation / test.

    ``splits[name]`` is ``(texts, labels)`` with ``labels`` an int64 array; ``classes`` names
    the label values ``0 .. C-1``.
    """

    name: str
    classes: tuple[str, ...]
    splits: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def sizes(self) -> dict[str, int]:
        return {k: len(v[0]) for k, v in self.splits.items()}


@public
def split_indices(n: int, sizes: Sequence[int | None], seed: int = 0) -> list[np.ndarray]:
    """A seeded permutation of ``range(n)`` cut into consecutive parts of ``sizes``
    (one ``None`` takes the rest)."""
    from .. import rng

    order = np.argsort(rng.random_bits(int(seed), 7, n), kind="stable")
    fixed = sum(s for s in sizes if s is not None)
    if fixed > n:
        raise ValueError(f"split sizes {list(sizes)} exceed the {n} examples")
    parts, at = [], 0
    for s in sizes:
        s = n - fixed if s is None else s
        parts.append(order[at:at + s])
        at += s
    return parts


@public
def make_task(name: str, texts: Sequence[str], labels: Sequence[int], classes: Sequence[str], sizes, seed: int = 0) -> Task:
    """A :class:`Task` from texts and labels cut by :func:`split_indices` into train / validation / test."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(texts) != labels.size:
        raise ValueError(f"{len(texts)} texts but {labels.size} labels")
    task = Task(name, tuple(classes))
    for key, idx in zip(("train", "validation", "test"), split_indices(len(texts), sizes, seed)):
        task.splits[key] = ([texts[i] for i in idx], labels[idx])
    return task


def _mr_polarity(load: Callable[[], Any] | None) -> Task:
    from .. import data

    rows = (load or data.mr_polarity)()  # (text, label, score), neutral sentences left out
    texts = [str(r[0]) for r in rows]
    labels = [int(r[1]) for r in rows]
    return make_task("mr-polarity", texts, labels, ("negative", "positive"), (8000, 1000, None))


def _trec(load: Callable[[], Any] | None) -> Task:
    from .. import data

    rows = (load or data.trec)()  # (question, coarse, fine), deduplicated by question
    seen, texts, labels = set(), [], []
    for question, coarse, *_ in rows:
        if question in seen:
            continue
        seen.add(question)
        texts.append(str(question))
        labels.append(TREC_CLASSES.index(coarse))
    n = len(texts)
    n_val = n_test = int(round(0.1 * n))
    return make_task("trec", texts, labels, TREC_CLASSES, (n - n_val - n_test, n_val, n_test))


@public
def load_task(name: str, *, load: Callable[[], Any] | None = None) -> Task:
    """The task ``name`` (one of :data:`TASKS`) from the pinned data of :mod:`lrmath.data`.

    ``load`` replaces the fetcher (tests pass a function returning local records).
    """
    if name == "mr-polarity":
        return _mr_polarity(load)
    if name == "trec":
        return _trec(load)
    raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")
