"""WSGI entry point: ``gunicorn -c python:serving.gunicorn_conf serving.wsgi:app``.

Imported once per gunicorn worker (after the fork; the config sets ``preload_app = False``),
so each worker loads its own model and runs its own poller and prediction-log shipper.
"""

from __future__ import annotations

from serving.app import create_app

app = create_app()
