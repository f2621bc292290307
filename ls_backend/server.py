"""HTTP server of the ML backend: a Flask app around one model instance."""

from __future__ import annotations

import argparse
import logging

from flask import Flask, jsonify

log = logging.getLogger(__name__)


def create_app(engine) -> Flask:
    """The backend's Flask app, serving requests with ``engine`` (a ``SamEngine``)."""
    app = Flask(__name__)

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify(status="UP", model_class="PromptMoEBackend", model_id=engine.model_id)

    return app


def serve(args: argparse.Namespace) -> None:
    """Load the model once (warm-up), then serve with Flask's development server."""
    from promptmoe_plugin.cli import make_engine

    engine = make_engine(args)
    log.info("serving %s on http://%s:%d", engine.model_id, args.host, args.port)
    create_app(engine).run(host=args.host, port=args.port, threaded=True)
