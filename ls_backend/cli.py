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


def main(argv: list[str] | None = None) -> int:
    return plugin_main(argv, extra=[add_serve])


if __name__ == "__main__":
    sys.exit(main())
