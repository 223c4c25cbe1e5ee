"""The naive baseline of the serving benchmark: a scoring service as typical tutorials write it.

Flask; the model unpickled once at import; per request a one-row DataFrame, ``predict_proba``
and one synchronous ``INSERT`` + ``COMMIT`` of the prediction. Served by the same gunicorn
settings as the real service: ``BASELINE_MODEL=model.pkl BASELINE_DB=postgresql://...
gunicorn -c python:serving.gunicorn_conf --pythonpath bench baseline_app:app``.
"""

from __future__ import annotations

import json
import os
import pickle
import uuid

import pandas as pd
import psycopg
from flask import Flask, jsonify, request

with open(os.environ["BASELINE_MODEL"], "rb") as fh:
    bundle = pickle.load(fh)
model, columns, threshold = bundle["model"], bundle["columns"], bundle["threshold"]
app = Flask(__name__)
_conn = None


def db():
    global _conn
    if _conn is None:  # one connection per worker, opened after the fork
        _conn = psycopg.connect(os.environ["BASELINE_DB"])
    return _conn


@app.post("/v1/score")
def score():
    tx = request.get_json()
    frame = pd.DataFrame([tx]).reindex(columns=columns)
    prob = float(model.predict_proba(frame)[0, 1])
    prediction_id = uuid.uuid4().hex
    features = {c: tx[c] for c in columns}
    conn = db()
    conn.execute(
        "INSERT INTO predictions (prediction_id, transaction_id, features, score, is_fraud, "
        "threshold, model_name, model_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            prediction_id,
            str(tx.get("transaction_id", prediction_id)),
            json.dumps(features),
            prob,
            prob >= threshold,
            threshold,
            "baseline",
            "1",
        ),
    )
    conn.commit()
    return jsonify(
        {
            "transaction_id": tx.get("transaction_id"),
            "prediction_id": prediction_id,
            "score": prob,
            "is_fraud": prob >= threshold,
        }
    )
