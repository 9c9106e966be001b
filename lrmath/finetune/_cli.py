"""CLI: ``lrmath finetune`` -- fine-tune the default encoder on a task with one method."""

from __future__ import annotations

from ..registry import command


@command("finetune", help="fine-tune all-MiniLM-L6-v2 on mr-polarity / trec with one method (LoRA, LoTR, SparseGrad, ...)")
def _args(parser):
    from .methods import METHODS
    from .tasks import TASKS

    parser.add_argument("--task", choices=TASKS, default="mr-polarity")
    parser.add_argument("--method", choices=list(METHODS), default="sparsegrad")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the largest of the method's grid, the rate chosen on validation for every method and task in benchmarks/results/finetune_cpu.md)")
    parser.add_argument("--grid", action="store_true", help="try the method's 3 rates on --seeds[0] and keep the best by validation accuracy")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0], help="training seeds (default 0)")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps (default 150)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--limit-train", type=int, default=None, help="use only the first N training examples")
    parser.add_argument("--limit-eval", type=int, default=None, help="evaluate on the first N examples of each split")
    return _run


def _run(args, ctx):
    from .methods import METHODS
    from .tasks import load_task
    from .train import Settings, load_encoder, run_one

    from ..backend import check_float, check_int

    # every option is checked before the model and data load (seconds), so bad input fails at once
    for name, hi in (("steps", 10**6), ("batch_size", 4096), ("max_length", 512)):
        check_int(getattr(args, name), f"--{name.replace('_', '-')}", minimum=1, maximum=hi)
    for name in ("limit_train", "limit_eval"):
        if getattr(args, name) is not None:
            check_int(getattr(args, name), f"--{name.replace('_', '-')}", minimum=1)
    if args.lr is not None:
        check_float(args.lr, "--lr", minimum=0.0, maximum=10.0, min_open=True)
    for seed in args.seeds or ():
        check_int(seed, "--seeds", minimum=0, maximum=2**32 - 1)
    s = Settings(steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                 limit_train=args.limit_train, limit_eval=args.limit_eval)
    task = load_task(args.task)
    base = load_encoder()
    lrs = list(METHODS[args.method].lrs) if args.grid else [args.lr if args.lr is not None else METHODS[args.method].default_lr]
    runs = []
    first = args.seeds[0] if args.seeds else 0
    for lr in lrs:
        runs.append(run_one(task, args.method, first, lr, s, base, show_progress=None))
    best = max(runs, key=lambda r: (r["accuracy"]["validation"], -r["lr"]))
    for sd in args.seeds[1:]:
        runs.append(run_one(task, args.method, sd, best["lr"], s, base))
    rows = [{"seed": r["seed"], "lr": r["lr"], "val acc": 100 * r["accuracy"]["validation"], "test acc": 100 * r["accuracy"]["test"],
             "trainable": r["trainable_params"], "optim state MB": r["optimizer_state_bytes"] / 2**20,
             "activations MB": r["activation_bytes"] / 2**20, "wall s": r["wall_s"]} for r in runs]
    ctx.print(f"{args.method} on {args.task} ({task.sizes()}), {s.steps} steps x {s.batch_size}, max length {s.max_length}")
    ctx.table(rows)
    return {"task": args.task, "method": args.method, "settings": s.__dict__, "runs": runs}
