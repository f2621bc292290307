"""The ``promptmoe`` command line: algorithm commands (``ls_backend.cli`` adds ``serve``).

Each subcommand is registered by an ``add_*`` function (see :func:`commands`) that adds
its parser and sets ``func``; the handler receives the parsed arguments and returns an
exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Options every command that runs SAM shares (env vars give the defaults)."""
    group = parser.add_argument_group("SAM engine")
    group.add_argument(
        "--sam-checkpoint",
        default=os.environ.get("SAM_CHECKPOINT") or None,
        help="SAM ViT-B/L/H or MobileSAM checkpoint (env SAM_CHECKPOINT; default: embedded MobileSAM)",
    )
    group.add_argument(
        "--device",
        default=os.environ.get("DEVICE", "auto"),
        help="auto, cpu, cuda or cuda:N (env DEVICE; default auto: CUDA when available)",
    )
    group.add_argument(
        "--cache-mb",
        type=float,
        default=float(os.environ.get("EMBEDDING_CACHE_MB", 512)),
        help="in-memory image embedding cache bound in MB (env EMBEDDING_CACHE_MB; default 512)",
    )
    group.add_argument(
        "--embedding-dir",
        default=os.environ.get("EMBEDDING_DIR") or None,
        help="also keep embeddings on disk in this folder (env EMBEDDING_DIR; default off)",
    )


def make_engine(args: argparse.Namespace):
    """Build the SAM engine from :func:`add_engine_options` arguments."""
    from .sam import SamEngine

    return SamEngine.create(
        checkpoint=args.sam_checkpoint,
        device=args.device,
        cache_mb=args.cache_mb,
        disk_cache=args.embedding_dir,
    )


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    """Write benchmark figures to ``path`` (parents created) when a path is given."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    log.info("wrote %s", path)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(make_engine(args), out=Path(args.out), image_path=args.image)
    return 0


Subparsers = argparse._SubParsersAction


def add_demo(sub: Subparsers, bench: Subparsers) -> None:
    p = sub.add_parser("demo", help="segment a bundled example image and write an overlay PNG")
    p.add_argument("-o", "--out", default="demo.png", help="overlay PNG to write (default demo.png)")
    p.add_argument("--image", help="use this image instead of the bundled astronaut photo (click at its centre)")
    add_engine_options(p)
    p.set_defaults(func=_run_demo)


def _run_bench_engine(args: argparse.Namespace) -> int:
    from .sam.bench import bench_engine, format_engine_report

    result = bench_engine(make_engine(args), repeats=args.repeats, batch=args.batch)
    print(format_engine_report(result))
    write_json(args.json, result)
    return 0


def add_bench_engine(sub: Subparsers, bench: Subparsers) -> None:
    p = bench.add_parser("engine", help="encoder and decoder time, batched vs one by one, cache, RSS")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions of each step (default 5)")
    p.add_argument("--batch", type=int, default=16, help="prompt sets decoded per batch (default 16)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    add_engine_options(p)
    p.set_defaults(func=_run_bench_engine)


def commands() -> list[Callable[[Subparsers, Subparsers], None]]:
    """Functions ``add(sub, bench)`` that register a command (``sub``) or a benchmark
    (``bench``, the subcommands of ``promptmoe bench``).

    Imported here, not at module level, because those modules use this module's
    :func:`add_engine_options` and :func:`make_engine`.
    """
    from .eval.bench import add_bench as add_bench_eval
    from .refine import add_refine
    from .router import add_train_router
    from .smartsam.cli import add_segment

    return [add_demo, add_bench_engine, add_bench_eval, add_refine, add_train_router, add_segment]


def build_parser(extra: Sequence[Callable[[Subparsers, Subparsers], None]] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptmoe", description="PromptMoE / SmartSAM segmentation tools")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = sub.add_parser("bench", help="benchmarks that print figures (and write --json)")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for add in [*commands(), *extra]:
        add(sub, bench_sub)
    return parser


def main(argv: list[str] | None = None, extra: Sequence[Callable[[Subparsers, Subparsers], None]] = ()) -> int:
    parser = build_parser(extra)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        log.debug("command failed", exc_info=True)
        print(f"promptmoe {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
