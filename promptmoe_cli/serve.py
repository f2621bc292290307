"""``promptmoe serve``: the Label Studio ML backend on Flask's development server."""

from __future__ import annotations

import argparse

from ls_backend.server import serve

from .options import Subparsers, add_settings_options, settings


def _run(args: argparse.Namespace) -> int:
    serve(settings(args), host=args.host, port=args.port)
    return 0


def register(sub: Subparsers, bench: Subparsers) -> None:
    p = sub.add_parser(
        "serve", help="run the Label Studio ML backend HTTP server (development server)"
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=9090, help="port to listen on (default 9090)")
    add_settings_options(p, ("engine", "backend"))
    p.set_defaults(func=_run)
