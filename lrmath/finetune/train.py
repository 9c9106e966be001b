"""Training, evaluation, measurement and the resumable table of the fine-tuning harness.

One *run* = (task, method, seed, learning rate, settings): AdamW (weight decay 0.01) over
the method's trainable parameters plus the head, a linear schedule with 10% warm-up,
``steps`` steps of ``batch_size`` training examples drawn by a seeded permutation, max
length 64 tokens (padded to the longest in the batch), then accuracy on the validation
and test splits. The classification head is trained with a fixed learning rate
(``head_lr``, 1e-3) in every method so that the grid searches only the method's own rate.

Measured per run: trainable parameters; optimizer-state bytes (the tensors in
``optimizer.state`` after the first step); peak saved-activation bytes of one training
forward on a fixed batch (``torch.autograd.graph.saved_tensors_hooks``: every tensor
autograd saves for backward, counted once per storage, parameters and buffers excluded);
wall time. Step time relative to ``full`` comes from :func:`time_steps` (every method
built once, one step each per round, interleaved, CPU time of the process; the per-round
ratio's median and range).

The table (:func:`run_table`) chooses the rate per method on seed 0 by validation accuracy
(ties: the smaller rate), then runs seeds 1 and 2 at it; every finished run is stored in a
JSON cache keyed by task, method, seed, rate and settings, written after each run, so an
interrupted table resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .._progress import progress
from .methods import METHODS, build, fresh_encoder
from .tasks import Task
from ..backend import public

__all__ = ["Settings", "run_one", "time_steps", "run_table", "summarise", "saved_activation_bytes", "optimizer_state_bytes",
           "load_encoder", "tiny_encoder", "RunCache"]


@dataclass(frozen=True)
class Settings:
    """What a run depends on besides task, method, seed and rate (part of the cache key)."""

    steps: int = 150
    batch_size: int = 16
    max_length: int = 64
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    eval_batch: int = 128
    limit_train: int | None = None   # use only the first N training examples (smoke runs)
    limit_eval: int | None = None    # evaluate on the first N of each split (smoke runs)
    model: str = "all-MiniLM-L6-v2"
    threads: int | None = None

    def key(self) -> str:
        d = asdict(self)
        d.pop("threads")  # does not change results beyond float noise
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------- models
@public
def load_encoder():
    """all-MiniLM-L6-v2 as a transformers ``BertModel`` (float32, trainable; :func:`lrmath.data.load_model`:
    the installed model package, loaded strictly offline)."""
    from .. import data

    return data.load_model(requires_grad=True)


@public
def tiny_encoder(seed: int = 0):
    """A randomly initialised 2-layer BERT (hidden 32, MLP 64) with MiniLM's vocabulary, for smoke tests."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=128)
    return BertModel(cfg)


def _tokenize(texts: Sequence[str], max_length: int):
    from .. import data

    return data.tokenize(list(texts), max_length)


# ----------------------------------------------------------------------------- measurement
@public
def optimizer_state_bytes(opt) -> int:
    """Bytes of every tensor held in ``opt.state`` (AdamW: exp_avg, exp_avg_sq, step)."""
    import torch

    return int(sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if torch.is_tensor(v)))


@public
def saved_activation_bytes(model, batch) -> int:
    """Bytes autograd saves for backward in one forward of ``model(**batch)`` (each storage once;
    parameters and buffers, which exist anyway, excluded)."""
    import torch

    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in own:
                seen[ptr] = max(seen.get(ptr, 0), st.nbytes())
        except (RuntimeError, NotImplementedError):  # sparse or meta tensors have no plain storage
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch)
    del out
    return int(sum(seen.values()))


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def _optimizer(model, lr: float, s: Settings):
    import torch

    head = list(model.head.parameters())
    hid = {id(p) for p in head}
    body = [p for p in _trainable(model) if id(p) not in hid]
    return torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": s.head_lr}], weight_decay=s.weight_decay)


def _schedule(opt, s: Settings):
    import torch

    warm = max(1, int(round(s.warmup_frac * s.steps)))

    def f(step):
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (s.steps - step) / max(1, s.steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def _batches(task: Task, s: Settings, seed: int):
    """``steps`` training batches (ids, mask, labels) from a seeded permutation (epochs as needed)."""
    import torch

    from .. import rng

    texts, labels = task.splits["train"]
    n = len(texts) if s.limit_train is None else min(len(texts), s.limit_train)
    need = s.steps * s.batch_size
    order = []
    epoch = 0
    while len(order) < need:
        order.extend(np.argsort(rng.random_bits(int(seed), 100 + epoch, n), kind="stable").tolist())
        epoch += 1
    for b in range(s.steps):
        idx = order[b * s.batch_size:(b + 1) * s.batch_size]
        ids, mask = _tokenize([texts[i] for i in idx], s.max_length)
        yield {"input_ids": ids, "attention_mask": mask}, torch.as_tensor(labels[idx])


def evaluate(model, task: Task, split: str, s: Settings) -> float:
    """Accuracy on ``split`` (examples sorted by length and batched, no gradients)."""
    import torch

    texts, labels = task.splits[split]
    if s.limit_eval is not None:
        texts, labels = texts[: s.limit_eval], labels[: s.limit_eval]
    order = np.argsort([len(t) for t in texts], kind="stable")
    correct = 0
    model.eval()
    with torch.no_grad():
        for a in range(0, len(order), s.eval_batch):
            idx = order[a:a + s.eval_batch]
            ids, mask = _tokenize([texts[i] for i in idx], s.max_length)
            pred = model(input_ids=ids, attention_mask=mask).argmax(-1).numpy()
            correct += int((pred == labels[idx]).sum())
    return correct / max(1, len(order))


def _loss(model, batch, y):
    import torch

    return torch.nn.functional.cross_entropy(model(**batch), y)


def _build(method, base, task, s, seed):
    warm_iter = _batches(task, Settings(**{**asdict(s), "steps": 64}), seed + 10_000)

    def warmup(model):
        batch, y = next(warm_iter)
        return _loss(model, batch, y)

    return build(method, fresh_encoder(base), task.n_classes, seed=seed, warmup=warmup)


@public
def run_one(task: Task, method: str, seed: int, lr: float, s: Settings, base, *, splits=("validation", "test"),
            show_progress: bool | None = None) -> dict:
    """Train ``method`` on ``task`` from ``base`` (an encoder) and return the run's record."""
    import torch

    if s.threads:
        torch.set_num_threads(s.threads)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model, info = _build(method, base, task, s, seed)
    setup_s = time.perf_counter() - t0
    opt = _optimizer(model, lr, s)
    sched = _schedule(opt, s)
    n_train = sum(p.numel() for p in _trainable(model))
    act = state = None
    losses = []
    model.train()
    for step, (batch, y) in enumerate(progress(_batches(task, s, seed), desc=f"{task.name} {method} s{seed} lr{lr:g}",
                                               total=s.steps, enabled=show_progress)):
        if step == 0:
            act = saved_activation_bytes(model, batch)
        loss = _loss(model, batch, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step == 0:
            state = optimizer_state_bytes(opt)
        if not math.isfinite(losses[-1]):
            break
    train_s = time.perf_counter() - t0
    acc = {sp: evaluate(model, task, sp, s) for sp in splits}
    return {"task": task.name, "method": method, "seed": seed, "lr": lr, "settings": s.key(),
            "trainable_params": int(n_train), "optimizer_state_bytes": int(state or 0), "activation_bytes": int(act or 0),
            "accuracy": acc, "final_loss": float(np.mean(losses[-10:])) if losses else float("nan"),
            "setup_s": setup_s, "train_s": train_s, "wall_s": time.perf_counter() - t0, **info}


@public
def time_steps(task: Task, methods: Sequence[str], s: Settings, base, *, rounds: int = 5, seed: int = 0) -> dict:
    """Step time of each method on one fixed batch, interleaved: every round runs one
    step (forward, backward, AdamW) of each method in turn. Returns per method the median
    seconds and the median / min / max of the per-round ratio to ``full``.

    Times are CPU seconds of the process (``time.process_time``): on a shared machine the
    wall time of a step mostly measures the other jobs; with ``Settings.threads = 1`` CPU
    time is the step's own cost."""
    import torch

    if s.threads:
        torch.set_num_threads(s.threads)
    models = {}
    batch, y = next(iter(_batches(task, Settings(**{**asdict(s), "steps": 1}), seed)))
    for m in methods:
        model, _ = _build(m, base, task, s, seed)
        opt = _optimizer(model, 1e-5, s)
        model.train()
        models[m] = (model, opt)

    def step(m):
        model, opt = models[m]
        opt.zero_grad(set_to_none=True)
        _loss(model, batch, y).backward()
        opt.step()

    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(rounds + 1):
        for m in methods:
            t0 = time.process_time()
            step(m)
            if r:  # round 0 is the warm-up
                times[m].append(time.process_time() - t0)
    out = {}
    for m in methods:
        d = {"median_s": statistics.median(times[m]), "rounds_s": times[m]}
        if "full" in times:
            ratio = [a / b for a, b in zip(times[m], times["full"])]
            d.update(ratio=statistics.median(ratio), ratio_min=min(ratio), ratio_max=max(ratio))
        out[m] = d
    return out


@public
class RunCache:
    """Finished runs in a JSON file, written atomically after every run."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else str(path)
        self.data: dict[str, Any] = {"runs": {}, "timing": {}}
        if self.path and os.path.exists(self.path):
            with open(self.path) as fh:
                self.data = json.load(fh)
            self.data.setdefault("runs", {})
            self.data.setdefault("timing", {})

    @staticmethod
    def key(task, method, seed, lr, s: Settings) -> str:
        return f"{task}|{method}|seed={seed}|lr={lr:g}|{s.key()}"

    def get(self, key):
        return self.data["runs"].get(key)

    def put(self, key, rec) -> None:
        self.data["runs"][key] = rec
        self.save()

    def save(self) -> None:
        """Write atomically, first merging runs another process added to the file meanwhile."""
        if not self.path:
            return
        try:
            with open(self.path) as fh:
                disk = json.load(fh)
            for part in ("runs", "timing"):
                for k, v in disk.get(part, {}).items():
                    self.data[part].setdefault(k, v)
        except (OSError, ValueError):
            pass
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(self.data, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def _pick_lr(recs: list[dict]) -> dict:
    return sorted(recs, key=lambda r: (-r["accuracy"]["validation"], r["lr"]))[0]


@public
def run_table(tasks: Sequence[Task], methods: Sequence[str], s: Settings, base, *, seeds: int = 3, cache: RunCache | None = None,
              timing_rounds: int = 5, log: Callable[[str], None] = print, deadline: float | None = None) -> dict:
    """Every (task, method): the rate grid on seed 0, then seeds 1..seeds-1 at the chosen rate.

    Finished runs come from / go to ``cache``; ``deadline`` (a ``time.time()`` value) stops
    before starting a run after it. Returns ``{"rows": summarise(...), "pending": [...]}``.
    """
    cache = cache or RunCache(None)
    pending = []
    for task in tasks:
        tkey = f"{task.name}|{s.key()}"
        if tkey not in cache.data["timing"] and (deadline is None or time.time() < deadline):
            log(f"timing {task.name}: {len(methods)} methods x {timing_rounds} interleaved rounds")
            cache.data["timing"][tkey] = time_steps(task, methods, s, base, rounds=timing_rounds)
            cache.save()
        for method in methods:
            grid = []
            for lr in METHODS[method].lrs:
                k = RunCache.key(task.name, method, 0, lr, s)
                rec = cache.get(k)
                if rec is None:
                    if deadline is not None and time.time() > deadline:
                        pending.append(k)
                        continue
                    rec = run_one(task, method, 0, lr, s, base)
                    cache.put(k, rec)
                    log(f"{k}: val {rec['accuracy']['validation']:.4f} test {rec['accuracy']['test']:.4f} ({rec['wall_s']:.0f} s)")
                grid.append(rec)
            if len(grid) < len(METHODS[method].lrs):
                pending.extend(f"{task.name}|{method}|seed={sd}|lr=(after the grid)" for sd in range(1, seeds))
                continue
            best = _pick_lr(grid)
            for sd in range(1, seeds):
                k = RunCache.key(task.name, method, sd, best["lr"], s)
                if cache.get(k) is None:
                    if deadline is not None and time.time() > deadline:
                        pending.append(k)
                        continue
                    rec = run_one(task, method, sd, best["lr"], s, base, splits=("test",))
                    cache.put(k, rec)
                    log(f"{k}: test {rec['accuracy']['test']:.4f} ({rec['wall_s']:.0f} s)")
    timing = {k: v for k, v in cache.data["timing"].items() if k.endswith(s.key())}
    return {"rows": summarise(cache, tasks, methods, s, seeds), "pending": pending, "timing": timing}


@public
def summarise(cache: RunCache, tasks: Sequence[Task | str], methods: Sequence[str], s: Settings, seeds: int = 3) -> list[dict]:
    """One row per (task, method) with a finished grid: accuracy mean ± std over the finished seeds."""
    rows = []
    for task in tasks:
        tname = task if isinstance(task, str) else task.name
        timing = cache.data["timing"].get(f"{tname}|{s.key()}", {})
        for method in methods:
            grid = [cache.get(RunCache.key(tname, method, 0, lr, s)) for lr in METHODS[method].lrs]
            if any(g is None for g in grid):
                continue
            best = _pick_lr(grid)
            recs = [best] + [r for r in (cache.get(RunCache.key(tname, method, sd, best["lr"], s)) for sd in range(1, seeds)) if r]
            accs = [100 * r["accuracy"]["test"] for r in recs]
            tm = timing.get(method, {})
            rows.append({
                "task": tname, "method": method, "lr": best["lr"],
                "grid val acc": " / ".join(f"{100 * g['accuracy']['validation']:.1f}" for g in grid),
                # None, not NaN, where a number does not exist yet (one seed, no timing round)
                "test acc": float(np.mean(accs)), "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
                "seeds": len(accs), "trainable": best["trainable_params"],
                "optim state MB": best["optimizer_state_bytes"] / 2**20, "activations MB": best["activation_bytes"] / 2**20,
                "step / full": tm.get("ratio"),
                "ratio range": f"{tm['ratio_min']:.2f}-{tm['ratio_max']:.2f}" if "ratio_min" in tm else "",
                "wall s": float(np.mean([r["wall_s"] for r in recs])),
            })
    return rows
