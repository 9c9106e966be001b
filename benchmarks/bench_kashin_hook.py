"""Kashin gradient compression (DDP hook) vs no compression, fp16 and PowerSGD: 2 CPU processes, gloo.

Task: MR movie-review polarity (``lrmath.data.mr_polarity``; seeded split 8,000 train / 1,000
validation / rest test, decisions.md), a 3-layer MLP (384-256-256-2, GELU, 165k parameters) on
*frozen* features: the mean of all-MiniLM-L6-v2's input token embeddings (no transformer layer).
This is a stand-in for the MR fine-tune, not the fine-tune: fine-tuning MiniLM under 9
communication schemes x several seeds does not fit this shared 2-core machine (load average 8-12
while this ran). The MLP keeps the gradient traffic real (dense 384x256 and 256x256 matrices).

Each row: one DDP run (2 processes, global batch 64 = 32 per rank, AdamW lr 1e-3, ``--epochs``
epochs), mean over ``--seeds`` seeds. *Bytes sent per step* are counted by wrapping
``torch.distributed.all_reduce`` / ``all_gather`` / ``all_to_all_single`` in the workers and applying
the ring formulas (``lrmath.torch.kashin_comm.ring_bytes``) to the buffers each call moves; the
uncompressed baseline runs torch's ``allreduce_hook`` so its traffic is counted the same way.
*Ratio* is bytes / the uncompressed run's bytes. Loss = mean training loss over the last epoch;
accuracy on the test split after the last epoch (percent); time per step = wall time of the
training loop / steps on rank 0 (compute + compression + communication).
A second table gives bytes per step vs world size from the same formulas (not measured beyond W = 2).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

HIDDEN = 256
CONFIGS = {
    "none (fp32 all-reduce)": {"hook": "allreduce"},
    "fp16_compress_hook": {"hook": "fp16"},
    "PowerSGD rank 1": {"hook": "powersgd", "rank": 1},
    "PowerSGD rank 2": {"hook": "powersgd", "rank": 2},
    "PowerSGD rank 4": {"hook": "powersgd", "rank": 4},
    "PowerSGD rank 8": {"hook": "powersgd", "rank": 8},  # about Kashin 2 bits' bytes
    "PowerSGD rank 32": {"hook": "powersgd", "rank": 32},
    "Kashin 2 bits": {"hook": "kashin", "bits": 2},
    "Kashin 3 bits": {"hook": "kashin", "bits": 3},
    "Kashin 2 bits two-phase": {"hook": "kashin", "bits": 2, "mode": "two_phase"},
}


def add_arguments(parser):
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--only", nargs="+", default=None, help="config names to run")


def _features():
    """Mean-pooled MiniLM *input token embeddings* of the MR sentences and the seeded split (cached).

    No transformer layer runs: the full encoder over 10.5k sentences costs ~6 CPU-minutes, more
    than this shared machine could give the whole table; bag-of-embeddings features keep the task
    real (MR polarity, ~70-75% for a linear probe) at negligible cost.
    """
    import numpy as np

    from lrmath._progress import cache_dir

    path = Path(cache_dir("bench")) / "mr_minilm_token_embedding_features.npz"
    if not path.exists():
        from lrmath import data

        rows = data.mr_polarity()
        emb = data.load_weights()["embeddings.word_embeddings.weight"].astype(np.float32)
        ids, mask = data.tokenize([r[0] for r in rows], max_length=64)
        ids, mask = ids.numpy(), mask.numpy().astype(np.float32)
        mask[:, 0] = 0  # drop [CLS]
        E = (emb[ids] * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
        E = (E - E.mean(0)) / (E.std(0) + 1e-6)
        y = np.asarray([r[1] for r in rows], dtype=np.int64)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, E=E.astype(np.float32), y=y)
        os.replace(tmp, path)
    z = np.load(path)
    E, y = z["E"], z["y"]
    perm = np.random.default_rng(0).permutation(len(y))
    tr, va, te = perm[:8000], perm[8000:9000], perm[9000:]
    return {"train": (E[tr], y[tr]), "val": (E[va], y[va]), "test": (E[te], y[te])}


def _count_collectives(dist, counter, world):
    from lrmath.torch.kashin_comm import ring_bytes

    orig = {"all_reduce": dist.all_reduce, "all_gather": dist.all_gather,
            "all_to_all_single": dist.all_to_all_single}

    def all_reduce(tensor, *a, **k):
        counter[0] += ring_bytes("all_reduce", tensor.numel() * tensor.element_size(), world)
        return orig["all_reduce"](tensor, *a, **k)

    def all_gather(out, tensor, *a, **k):
        counter[0] += ring_bytes("all_gather", tensor.numel() * tensor.element_size(), world)
        return orig["all_gather"](out, tensor, *a, **k)

    def all_to_all_single(out, inp, *a, **k):
        counter[0] += ring_bytes("all_to_all", inp.numel() * inp.element_size(), world)
        return orig["all_to_all_single"](out, inp, *a, **k)

    dist.all_reduce, dist.all_gather, dist.all_to_all_single = all_reduce, all_gather, all_to_all_single


def _train_one(rank, world, cfg, seed, feats, epochs, counter):
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lrmath.torch import KashinHookState, kashin_hook

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(384, HIDDEN), torch.nn.GELU(), torch.nn.Linear(HIDDEN, HIDDEN),
                                torch.nn.GELU(), torch.nn.Linear(HIDDEN, 2))
    ddp = DDP(model)
    h = cfg["hook"]
    if h == "allreduce":
        ddp.register_comm_hook(None, default_hooks.allreduce_hook)
    elif h == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif h == "powersgd":
        st = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=cfg["rank"],
                                         start_powerSGD_iter=2, min_compression_rate=1.0, random_seed=seed)
        ddp.register_comm_hook(st, powerSGD_hook.powerSGD_hook)
    else:
        st = KashinHookState(bits=cfg["bits"], mode=cfg.get("mode", "allgather"),
                             error_feedback=cfg.get("error_feedback", True), seed=seed)
        ddp.register_comm_hook(st, kashin_hook)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    Xtr, ytr = (torch.from_numpy(a) for a in feats["train"])
    per = 32
    gen = np.random.default_rng(seed)
    losses, steps = [], 0
    counter[0] = 0
    t0 = time.perf_counter()
    for ep in range(epochs):
        order = torch.from_numpy(gen.permutation(len(ytr)))
        ep_losses = []
        for s in range(0, len(ytr) - world * per + 1, world * per):
            idx = order[s + rank * per: s + (rank + 1) * per]
            loss = torch.nn.functional.cross_entropy(ddp(Xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ep_losses.append(float(loss))
            steps += 1
        losses = ep_losses
    elapsed = time.perf_counter() - t0
    sent = counter[0]
    # ranks must hold identical parameters (every scheme averages identically on all ranks)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    other = flat.clone()
    dist.broadcast(other, 0)
    counter[0] = sent
    drift = float((flat - other).abs().max())
    mean_loss = torch.tensor([statistics.fmean(losses)], dtype=torch.float64)
    dist.all_reduce(mean_loss)
    counter[0] = sent
    with torch.no_grad():
        acc = {}
        for split in ("val", "test"):
            X, y = (torch.from_numpy(a) for a in feats[split])
            acc[split] = 100.0 * float((model(X).argmax(1) == y).double().mean())
    return {"loss": float(mean_loss) / world, "val acc": acc["val"], "test acc": acc["test"],
            "bytes/step": sent / steps, "s/step": elapsed / steps, "rank drift": drift, "steps": steps}


def _worker(rank, world, init, jobs, epochs, partial):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    counter = [0]
    _count_collectives(dist, counter, world)
    feats = _features()
    for name, seed in jobs:
        res = _train_one(rank, world, CONFIGS[name], seed, feats, epochs, counter)
        if rank == 0:
            done = json.loads(Path(partial).read_text()) if Path(partial).exists() else {}
            done[f"{name}|{seed}"] = res
            Path(partial).write_text(json.dumps(done, indent=1))
            print(name, seed, {k: round(v, 4) for k, v in res.items()}, flush=True)
        dist.barrier()
    dist.destroy_process_group()


def _world_table(n_params):
    from lrmath.torch.kashin_comm import payload_bytes, ring_bytes

    rows = []
    for W in (2, 4, 8, 16, 64):
        fp32 = ring_bytes("all_reduce", 4 * n_params, W)
        row = {"world size": W, "fp32 all-reduce B/step": fp32}
        for bits in (2, 3):
            P = payload_bytes(n_params, bits)
            ag = ring_bytes("all_gather", P, W)
            chunk = payload_bytes(-(-n_params // W), bits)
            tp = ring_bytes("all_to_all", W * chunk, W) + ring_bytes("all_gather", chunk, W)
            row[f"Kashin {bits}b all-gather (ratio)"] = f"{ag} ({ag / fp32:.3f})"
            row[f"Kashin {bits}b two-phase (ratio)"] = f"{tp} ({tp / fp32:.3f})"
        rows.append(row)
    return rows


def run(args) -> dict:
    import tempfile

    import torch.multiprocessing as mp

    from benchmarks._harness import RESULTS, format_table, write_results

    _features()  # compute the cache once, before spawning
    names = args.only or list(CONFIGS)
    seeds = list(range(args.seeds))
    out_dir = Path(os.environ.get("LRMATH_BENCH_OUT") or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f"kashin_hook_cpu.partial-e{args.epochs}.json"
    done = json.loads(partial.read_text()) if partial.exists() else {}
    jobs = [(n, s) for s in seeds for n in names if f"{n}|{s}" not in done]
    if jobs:
        with tempfile.TemporaryDirectory() as tmp:
            init = f"file://{tmp}/rendezvous"
            mp.start_processes(_worker, args=(2, init, jobs, args.epochs, str(partial)), nprocs=2,
                               start_method="spawn", join=True)
        done = json.loads(partial.read_text())
    base_bytes = statistics.fmean(done[f"{names[0]}|{s}"]["bytes/step"] for s in seeds) \
        if all(f"{names[0]}|{s}" in done for s in seeds) else None
    rows = []
    for n in names:
        rs = [done[f"{n}|{s}"] for s in seeds if f"{n}|{s}" in done]
        if not rs:
            continue
        b = statistics.fmean(r["bytes/step"] for r in rs)
        acc = [r["test acc"] for r in rs]
        rows.append({"scheme": n, "bytes/step": b, "ratio to fp32": (b / base_bytes) if base_bytes else None,
                     "loss (last epoch)": statistics.fmean(r["loss"] for r in rs),
                     "test acc %": statistics.fmean(acc),
                     "acc min-max": f"{min(acc):.2f}-{max(acc):.2f}",
                     "val acc %": statistics.fmean(r["val acc"] for r in rs),
                     "ms/step": 1e3 * statistics.fmean(r["s/step"] for r in rs),
                     "max rank drift": max(r["rank drift"] for r in rs), "seeds": len(rs)})
    n_params = 384 * HIDDEN + HIDDEN + HIDDEN * HIDDEN + HIDDEN + HIDDEN * 2 + 2
    world = _world_table(n_params)
    notes = (__doc__ or "").strip() + "\n\nBytes per step vs world size (ring formulas, this model):\n\n" + \
        format_table(world)
    write_results("kashin_hook", rows, {"epochs": args.epochs, "seeds": seeds, "runs": done,
                                        "world_table": world}, notes=notes)
    return {"rows": rows}
