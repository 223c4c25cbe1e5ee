"""The ceiling of the serving benchmark: a Flask hello-world that parses the JSON body and
answers a small JSON, nothing else. Served by the same gunicorn settings as the service
(``gunicorn -c python:serving.gunicorn_conf --pythonpath bench hello_app:app``), it is the
most any Flask service can answer on this gunicorn; ``bench_serving.py`` reports fraudloop's
share of it."""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.post("/v1/score")
def score() -> Response:
    """The transaction's id and a constant score."""
    tx = request.get_json()
    return jsonify({"transaction_id": tx.get("transaction_id"), "score": 0.0})
