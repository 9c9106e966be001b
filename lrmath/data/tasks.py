"""Data sets: the tiny built-in sentence-pair task and loaders of the fetched real data.

================================  ==========================================================
function                          returns
================================  ==========================================================
:func:`text_pairs`                72 built-in ``(sentence_a, sentence_b, label)`` pairs
:func:`task_batch`                tokenized pairs + labels for the task
:func:`classification_data`       the task's 72 sentences with topic labels (6 classes)
:func:`loss`                      cosine-similarity MSE loss of a model on a batch
:func:`lee_news`                  300 news articles (str), split by article
:func:`stsb`                      STS-B ``(sentence_a, sentence_b, score)`` rows
:func:`mr_polarity`               movie-review ``(text, label, score)`` rows
:func:`trec`                      TREC ``(question, coarse, fine)`` rows, deduplicated
================================  ==========================================================

Decisions
---------
* **The task** (:func:`text_pairs`) is 72 short sentence pairs on six topics (food,
  sport, weather, programming, music, travel) written for this module: 36 pairs from the
  same topic with label 1.0 and 36 pairs from different topics with label 0.0. The loss
  is sentence-transformers' ``CosineSimilarityLoss``: ``mean((cos(u, v) - label)^2)``
  of mean-pooled embeddings.
* **Real data** come from :func:`lrmath.data.fetch` (pinned packages, checked by sha256)
  and are returned as plain Python lists of strings and numbers, in file order, so any
  framework can use them.
* **lee-news split** (``shared/decisions.md``): the first 150 articles are calibration /
  fine-tuning text, the last 150 evaluation text; nothing may calibrate or train on the
  evaluation half.
* **STS-B** is read from the three files (the package's own loader returns dev as test).
* **MR labels** are the sign of the mean human score: 1 positive, 0 negative; the 37
  sentences scored exactly 0 are dropped unless ``neutral=True`` (then their label is -1).
* **TREC** has 15,452 lines but 5,382 distinct ones; rows are deduplicated by question
  text in file order (one question carries two labels; its first is kept): 5,381 rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .models import _torch, tokenize

if TYPE_CHECKING:  # pragma: no cover
    import torch

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
    from .. import rng

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
    order = np.argsort(rng.random_bits(int(seed), 0, len(pairs)), kind="stable")
    return [pairs[i] for i in order]


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
    from ..backend import check_positive_int

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
    from .. import rng

    torch = _torch()
    classes = list(_TOPICS)
    items = [(s, c) for c, name in enumerate(classes) for s in _TOPICS[name]]
    order = np.argsort(rng.random_bits(int(seed), 1, len(items)), kind="stable")
    items = [items[i] for i in order]
    ids, mask = tokenize([s for s, _ in items], max_length)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.tensor([c for _, c in items], dtype=torch.int64),
        "classes": classes,
        "sentences": [s for s, _ in items],
    }


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
    from ..torch.model import mean_pool

    torch = _torch()
    device = next(model.parameters()).device
    pooled = []
    for ids, mask in _batch_calls(batch):
        ids, mask = ids.to(device), mask.to(device)
        pooled.append(mean_pool(model(input_ids=ids, attention_mask=mask), mask, normalize=False))
    emb = torch.cat(pooled)
    n = batch["labels"].shape[0]
    u, v = emb[:n], emb[n:]
    cos = torch.nn.functional.cosine_similarity(u, v, dim=-1)
    return torch.mean((cos - batch["labels"].to(device=device, dtype=cos.dtype)) ** 2)


# ==================================================================== real data sets
_SPLITS = ("all", "calibration", "evaluation")


def _read_text(name: str, file: str) -> str:
    from .fetch import fetch

    return (fetch(name) / file).read_text(encoding="utf-8")


def _check_choice(value: Any, name: str, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def lee_news(split: str = "all") -> list[str]:
    """The 300 news articles of the Lee corpus (``lee-news``), one string per article.

    Parameters
    ----------
    split : {"all", "calibration", "evaluation"}
        ``"calibration"``: articles 0..149 (for calibration and fine-tuning);
        ``"evaluation"``: articles 150..299 (held out; perplexity is measured on these);
        ``"all"``: all 300 in file order.

    Returns
    -------
    list of str
        Articles with surrounding whitespace stripped (300, 150 or 150 of them).
    """
    split = _check_choice(split, "split", _SPLITS)
    articles = [ln.strip() for ln in _read_text("lee-news", "lee_background.cor").splitlines() if ln.strip()]
    half = len(articles) // 2
    return {"all": articles, "calibration": articles[:half], "evaluation": articles[half:]}[split]


def stsb(split: str = "test") -> list[tuple[str, str, float]]:
    """STS benchmark pairs with their gold similarity score in [0, 5].

    Parameters
    ----------
    split : {"train", "dev", "test"}
        5,749 / 1,500 / 1,379 pairs.

    Returns
    -------
    list of (str, str, float)
        ``(sentence_a, sentence_b, score)`` in file order (tab-separated, no quoting;
        score in column 5, sentences in 6 and 7; two trailing source columns on some
        rows are ignored).
    """
    split = _check_choice(split, "split", ("train", "dev", "test"))
    rows = []
    for ln in _read_text("stsb", f"sts-{split}.csv").split("\n"):
        if not ln.strip():
            continue
        f = ln.split("\t")
        rows.append((f[5], f[6], float(f[4])))
    return rows


def mr_polarity(*, neutral: bool = False) -> list[tuple[str, int, float]]:
    """Movie-review sentences with mean human sentiment (Hutto & Gilbert 2014).

    Parameters
    ----------
    neutral : bool
        Keep the 37 sentences whose mean score is exactly 0 (label -1). Default False:
        10,568 rows (5,242 positive, 5,326 negative).

    Returns
    -------
    list of (str, int, float)
        ``(text, label, score)``: label 1 if score > 0, 0 if score < 0; score the mean
        human rating in [-4, 4]; file order.
    """
    rows = []
    for ln in _read_text("mr-polarity", "movieReviewSnippets_GroundTruth.txt").splitlines():
        if not ln.strip():
            continue
        _, score, text = ln.split("\t", 2)
        s = float(score)
        label = 1 if s > 0 else 0 if s < 0 else -1
        if label >= 0 or neutral:
            rows.append((text.strip(), label, s))
    return rows


def trec() -> list[tuple[str, str, str]]:
    """TREC question classification (Li & Roth 2002), deduplicated by question.

    Returns
    -------
    list of (str, str, str)
        ``(question, coarse, fine)`` such as ``("What is the full form of .com ?", "ABBR",
        "exp")``; 5,381 rows in first-occurrence order; coarse labels ABBR, DESC, ENTY,
        HUM, LOC, NUM.
    """
    seen: dict[str, tuple[str, str, str]] = {}
    for ln in _read_text("trec", "question_labels.txt").splitlines():
        if not ln.strip():
            continue
        label, question = ln.strip().split(" ", 1)
        coarse, fine = label.split(":", 1)
        seen.setdefault(question, (question, coarse, fine))
    return list(seen.values())
