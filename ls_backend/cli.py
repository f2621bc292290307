"""``promptmoe`` console script: the algorithm commands plus ``serve``."""

from __future__ import annotations

import argparse
import sys

from promptmoe_plugin.cli import Subparsers
from promptmoe_plugin.cli import main as plugin_main

from .config import add_backend_options


def _run_serve(args: argparse.Namespace) -> int:
    from .server import serve

    serve(args)
    return 0


def add_serve(sub: Subparsers, bench: Subparsers) -> None:
    p = sub.add_parser("serve", help="run the Label Studio ML backend HTTP server (development server)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=9090, help="port to listen on (default 9090)")
    add_backend_options(p)
    p.set_defaults(func=_run_serve)


def _run_bench_server(args: argparse.Namespace) -> int:
    from .bench import run

    return run(args)


def add_bench_server(sub: Subparsers, bench: Subparsers) -> None:
    p = bench.add_parser("server", help="HTTP vs in-process latency of /predict (clicks, drafts) and RSS over many images")
    p.add_argument("--data", action="append", required=True, metavar="DIR",
                   help="dataset folder (img/+gt/ or data_GT/+boundary_GT/); repeat for several")
    p.add_argument("--images", type=int, default=100, help="distinct images sent (default 100)")
    p.add_argument("--latency-images", type=int, default=20,
                   help="of those, the images used for the latency figures (default 20)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    add_backend_options(p)
    p.set_defaults(func=_run_bench_server)


def main(argv: list[str] | None = None) -> int:
    return plugin_main(argv, extra=[add_serve, add_bench_server])


if __name__ == "__main__":
    sys.exit(main())
