"""``promptmoe``: build the parser from every command module, configure logging, run."""

from __future__ import annotations

import argparse
import logging
import sys

from . import annotate, bench, serve, tools

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``promptmoe`` with every command and ``promptmoe bench`` benchmark."""
    parser = argparse.ArgumentParser(
        prog="promptmoe", description="PromptMoE / SmartSAM segmentation tools"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench_parser = sub.add_parser("bench", help="benchmarks that print figures (and write --json)")
    bench_sub = bench_parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for module in (serve, tools, annotate, bench):
        module.register(sub, bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (2 with a one-line message on bad input)."""
    args = build_parser().parse_args(argv)
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
