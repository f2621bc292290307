"""Gunicorn entry point with the CLI's logging: ``gunicorn 'promptmoe_cli.wsgi:app_factory()'``."""

from __future__ import annotations

import logging

from flask import Flask

from ls_backend import server


def app_factory() -> Flask:
    """Log INFO lines to stderr, then build the backend from the environment's settings."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return server.app_factory()
