"""Fine-tuning table: all-MiniLM-L6-v2 on mr-polarity and trec, every method, 3 seeds (resumable).

Per (task, method): the method's 3 learning rates on seed 0 (chosen by validation
accuracy), then seeds 1 and 2 at the chosen rate; test accuracy mean ± std over the 3
seeds; trainable parameters, optimizer-state bytes and saved-activation bytes measured
in the run; step time relative to full fine-tuning from interleaved rounds (median and
range of the per-round ratio); mean wall time of a run. See :mod:`lrmath.finetune.train`.

Every finished run is written to ``benchmarks/results/finetune_runs.json`` at once, so an
interrupted table resumes: rerun the same command. ``--deadline-min`` stops starting new
runs after that many minutes and lists the pending ones.

Budget arithmetic (2 cores, unloaded; facts.md: a full fine-tuning step of MiniLM at
32 x 32 tokens takes 0.50-0.56 s): 150 steps of 16 examples per run; MR batches pad to
48 tokens on average (16 x 48 = 768 tokens, ~0.4 s per full step), TREC batches to 23
(~0.2 s).
Evaluation costs about a third of a training step per example: MR grid runs evaluate
2,568 examples (~55 step-equivalents), seed runs 1,568 (~33); TREC 1,076 / 538. Adapter
methods' steps cost ~0.6 of a full step. Per task 11 methods x (3 grid + 2 seed) runs:
MR ~ 55 x (150 + 45) x 0.3 s ~ 54 min, TREC ~ 55 x (150 + 20) x 0.15 s ~ 23 min, plus
the SparseGrad warm-up (8 backward passes + 12 eigensolves, ~15 s per run) and the
timing rounds: ~85 minutes in all, inside the 2-hour budget. On a shared, loaded machine
it takes several times longer: that is what the cache is for.
"""

from __future__ import annotations

import time

from benchmarks._harness import RESULTS, write_results


def add_arguments(p):
    p.add_argument("--tasks", nargs="*", default=["trec", "mr-polarity"])
    p.add_argument("--methods", nargs="*", default=None, help="default: every method")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--deadline-min", type=float, default=None, help="start no run after this many minutes")
    p.add_argument("--cache", default=str(RESULTS / "finetune_runs.json"))


def _pending_summary(pending) -> str:
    counts: dict[str, dict[str, int]] = {}
    for key in pending:
        task, method = key.split("|")[:2]
        counts.setdefault(task, {})
        counts[task][method] = counts[task].get(method, 0) + 1
    if not counts:
        return "none"
    return "; ".join(f"{t}: " + ", ".join(f"{m} x {n}" for m, n in ms.items()) for t, ms in counts.items())


def _table(out, s, args, started):
    from lrmath.finetune.methods import METHODS

    rows = out["rows"]
    for r in rows:
        r["test acc"] = f"{r['test acc']:.2f} ± {r['std']:.2f}" if r["std"] is not None else f"{r['test acc']:.2f}"
        r.pop("std")
    grids = "; ".join(f"{m}: {', '.join(f'{x:g}' for x in spec.lrs)}" for m, spec in METHODS.items())
    notes = (f"all-MiniLM-L6-v2 (transformers BertModel) + linear head on mean-pooled output; {s.steps} AdamW steps of "
             f"{s.batch_size} examples, max length {s.max_length}, linear schedule with 10% warm-up, weight decay "
             f"{s.weight_decay}, head lr {s.head_lr:g}. Splits: mr-polarity 8,000 / 1,000 / 1,568 (seed 0), trec "
             "4,305 / 538 / 538 after dedup. Learning-rate grids: " + grids + ". 'test acc' = mean ± std over the "
             "finished seeds (column 'seeds'); 'optim state MB' = AdamW tensors measured after the first step; "
             "'activations MB' = bytes autograd saved in one training forward (saved_tensors_hooks, parameters "
             "excluded) on the first batch; 'step / full' = median per-round ratio to full fine-tuning over "
             "interleaved rounds on one batch, in CPU seconds of the process with one thread (range shown); "
             "'wall s' = mean wall time of a run on the shared machine. Pending runs (task: method x runs; resume with "
             "the same command): " + _pending_summary(out["pending"]) + ".")
    pairs = []
    for key, tm in out.get("timing", {}).items():
        a, b = tm.get("lrmath-lora-qv", {}).get("rounds_s"), tm.get("peft-lora-qv", {}).get("rounds_s")
        if a and b:
            r = sorted(x / y for x, y in zip(a, b))
            pairs.append(f"{key.split('|')[0]}: lrmath-lora-qv / peft-lora-qv step time {r[len(r) // 2]:.2f} "
                         f"(range {r[0]:.2f}-{r[-1]:.2f}, {sum(x <= 1.0 for x in r)}/{len(r)} rounds faster or equal)")
    if pairs:
        notes += " " + "; ".join(pairs) + "."
    for key, tm in out.get("timing", {}).items():  # shown even before any accuracy row has finished
        notes += (f" Step time / full on {key.split('|')[0]} (median of the per-round ratio, range): "
                  + ", ".join(f"{m} {d['ratio']:.2f} ({d['ratio_min']:.2f}-{d['ratio_max']:.2f})" for m, d in tm.items() if "ratio" in d)
                  + ".")
    meta = {"settings": s.__dict__, "settings_key": s.key(), "tasks": args.tasks, "seeds": args.seeds,
            "pending": out["pending"], "minutes": (time.time() - started) / 60}
    write_results("finetune", rows, meta, device="cpu", notes=notes)


def run(args):
    import torch

    from lrmath.finetune import METHODS, load_task
    from lrmath.finetune.train import RunCache, Settings, load_encoder, run_table

    if args.threads:
        torch.set_num_threads(args.threads)
    s = Settings(steps=2 if args.quick else args.steps, batch_size=args.batch_size, max_length=args.max_length,
                 limit_train=64 if args.quick else None, limit_eval=64 if args.quick else None)
    methods = args.methods or list(METHODS)
    tasks = [load_task(t) for t in args.tasks]
    base = load_encoder()
    started = time.time()
    deadline = started + 60 * args.deadline_min if args.deadline_min is not None else None
    cache = RunCache(None if args.quick else args.cache)
    out = run_table(tasks, methods, s, base, seeds=args.seeds, cache=cache, deadline=deadline,
                    log=lambda m: print(m, flush=True))
    if not args.quick:
        _table(out, s, args, started)
    return out
