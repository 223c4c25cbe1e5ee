"""The OpenAPI document and /docs, in-process: the checked-in copy is current, the served one
describes the served model, the real answers conform to it, and /docs needs no outside host."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, REPO, rows_of, set_champion
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from fraud_lib.config import Settings
from fraud_lib.schema import FeatureSchema
from serving.labels_input import validate_labels
from serving.openapi import build_document, encode
from serving.validation import ApiError, validate_transactions

CHECKED_IN = REPO / "docs" / "openapi.json"
FRAUD = str(Path(sys.executable).with_name("fraud"))
DOC_URI = "urn:fraudloop:openapi"


BOUNDS = Settings.from_env({}).timestamp_bounds  # the default labeled_at range


def validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    """A JSON Schema validator of ``components.schemas[name]`` of ``document``."""
    registry = Registry().with_resource(DOC_URI, Resource.opaque(document))
    ref = {"$ref": f"{DOC_URI}#/components/schemas/{name}"}
    return Draft202012Validator(ref, registry=registry)


def response_validator(document: dict[str, Any], path: str, method: str, status: int):
    media = document["paths"][path][method]["responses"][str(status)]["content"]
    schema = media["application/json"]["schema"]
    registry = Registry().with_resource(DOC_URI, Resource.opaque(document))
    resolved = json.loads(json.dumps(schema).replace('"#/components', f'"{DOC_URI}#/components'))
    return Draft202012Validator(resolved, registry=registry)


def conforms(document, path, method, resp) -> None:
    errors = list(response_validator(document, path, method, resp.status_code).iter_errors(
        resp.get_json()))  # fmt: skip
    assert not errors, f"{method.upper()} {path} {resp.status_code}: {errors[0].message}"


# ------------------------------------------------------------------------ the checked-in copy
def test_checked_in_document_is_the_generated_one():
    fresh = encode(build_document(FeatureSchema(), Settings.from_env({}).max_batch))
    assert CHECKED_IN.read_bytes() == fresh, "docs/openapi.json is stale: run `make openapi`"


def test_cli_writes_the_checked_in_document_and_refuses_a_bad_schema(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "openapi.json"
    proc = subprocess.run([FRAUD, "openapi", "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == CHECKED_IN.read_bytes()
    bad = tmp_path / "schema.json"
    bad.write_bytes(b'{"time": "t", "label": "y", "features": [1, 2]}\xff')
    proc = subprocess.run([FRAUD, "openapi", "--schema", str(bad)], env=env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    proc = subprocess.run([FRAUD, "openapi", "--out", str(tmp_path / "no" / "dir.json")], env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot write")


def test_document_is_a_valid_openapi_31_document():
    import schemathesis

    document = json.loads(CHECKED_IN.read_bytes())
    assert document["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(document)
    operations = sorted(f"{op.ok().method.upper()} {op.ok().path}"
                        for op in schema.get_all_operations())  # fmt: skip
    assert operations == ["GET /healthz", "GET /metrics", "GET /readyz", "GET /v1/model",
                          "POST /admin/reload", "POST /v1/labels", "POST /v1/score"]  # fmt: skip


def test_request_schemas_follow_the_validation_rules():
    """What the document says of a request is what the validators decide, on cases at the
    edges of every rule."""
    document = build_document(FeatureSchema(), 3)
    tx, labels = validator(document, "Transaction"), validator(document, "LabelBatch")
    batch = validator(document, "TransactionBatch")
    row = {c: 0.5 for c in FeatureSchema().features}
    cases = [
        {**row, "transaction_id": "x" * 200},
        {**row, "transaction_id": "x" * 201},
        {**row, "transaction_id": ""},
        {**row, "transaction_id": "a\x00b"},
        {**row, "transaction_id": 478.0},
        {**row, "transaction_id": None, "event_time": None, "Time": 3, "Class": "anything"},
        {**row, "transaction_id": True},
        {**row, "V1": True},
        {**row, "V1": "1.0"},
        {**row, "V1": 2**1100},
        {**row, "V1": 1e308},
        {**row, "event_time": "noon"},
        {**row, "unknown": 1},
        {k: v for k, v in row.items() if k != "V4"},
        [row],
    ]
    for case in cases:
        try:
            validate_transactions(case, FeatureSchema(), 3)
            accepted = True
        except ApiError:
            accepted = False
        assert tx.is_valid(case) == accepted, case
    lenient = {**row, "transaction_id": 12345}  # taken as "12345", not in the document
    assert not tx.is_valid(lenient) and validate_transactions(lenient, FeatureSchema(), 3)
    assert batch.is_valid({"transactions": [row] * 3})
    assert not batch.is_valid({"transactions": [row] * 4})
    assert not batch.is_valid({"transactions": []})
    label_cases = [
        {"transaction_id": "t", "label": 1},
        {"transaction_id": "t", "label": 0, "labeled_at": "2024-05-01T12:00:00Z"},
        {"transaction_id": "t", "label": 0, "labeled_at": None},
        {"transaction_id": "t", "label": 2},
        {"transaction_id": "t", "label": True},
        {"transaction_id": "t", "label": "1"},
        {"transaction_id": "t"},
        {"label": 1},
        {"transaction_id": "t", "label": 1, "labeled_at": 5},
        {"transaction_id": "t", "label": 1, "source": "api"},
    ]
    for case in label_cases:
        try:
            validate_labels({"labels": [case]}, 3, BOUNDS)
            accepted = True
        except ApiError:
            accepted = False
        assert labels.is_valid({"labels": [case]}) == accepted, case


def test_integer_ids_longer_than_the_limit_are_refused(client, frames):
    """Regression: an integer transaction id was stored whatever its length (up to 4300
    digits) while a string id is limited to MAX_ID_LENGTH characters."""
    row = {**rows_of(frames, 1)[0], "transaction_id": 10**250}
    resp = client.post("/v1/score", json=row)
    assert resp.status_code == 400
    assert "transaction_id" in resp.get_json()["error"]["fields"]
    labels = {"labels": [{"transaction_id": 10**250, "label": 1}]}
    resp = client.post("/v1/labels", json=labels)
    assert resp.status_code == 400
    assert resp.get_json()["error"]["fields"] == {
        "labels[0].transaction_id": "must be 1 to 200 characters (got 251)"
    }
    ok = client.post("/v1/score", json={**row, "transaction_id": 10**199})
    assert ok.status_code == 200 and ok.get_json()["transaction_id"] == str(10**199)


def test_request_examples_are_accepted():
    document = build_document(FeatureSchema(), 10)
    score = document["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]
    for example in score["examples"].values():
        validate_transactions(example["value"], FeatureSchema(), 10)
    body = document["paths"]["/v1/labels"]["post"]["requestBody"]["content"]["application/json"]
    assert validate_labels(body["example"], 10, BOUNDS)


# ------------------------------------------------------------------------ the served document
def test_served_document_describes_the_served_model_and_limits(
    make_app, serving_settings, model_store
):
    client = make_app(max_batch=7).test_client()
    resp = client.get("/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    document = resp.get_json()
    assert document == build_document(FeatureSchema(), 7)
    items = document["components"]["schemas"]["TransactionBatch"]["properties"]["transactions"]
    assert items["maxItems"] == 7
    set_champion(serving_settings, model_store["versions"]["other_schema"])
    other = make_app().test_client().get("/openapi.json").get_json()
    required = other["components"]["schemas"]["Transaction"]["required"]
    assert required == ["V1", "V2", "V3", "V4", "V10", "V14", "Amount"]


def test_every_answer_conforms_to_the_document(client, frames):
    document = client.get("/openapi.json").get_json()
    rows = rows_of(frames, 3)
    conforms(document, "/v1/score", "post", client.post("/v1/score", json=rows[0]))
    conforms(document, "/v1/score", "post", client.post("/v1/score", json={"transactions": rows}))
    bad = client.post("/v1/score", json={**rows[0], "V1": "x"})
    assert bad.status_code == 400
    conforms(document, "/v1/score", "post", bad)
    conforms(document, "/v1/score", "post", client.post("/v1/score", data="x"))
    labels = {"labels": [{"transaction_id": rows[0]["transaction_id"], "label": 1}]}
    conforms(document, "/v1/labels", "post", client.post("/v1/labels", json=labels))
    conforms(document, "/v1/model", "get", client.get("/v1/model"))
    conforms(document, "/healthz", "get", client.get("/healthz"))
    conforms(document, "/readyz", "get", client.get("/readyz"))
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    conforms(document, "/admin/reload", "post", client.post("/admin/reload", headers=auth))
    conforms(document, "/admin/reload", "post", client.post("/admin/reload"))


def test_refused_version_and_outage_answers_conform(make_app, serving_settings, model_store):
    client = make_app().test_client()
    document = client.get("/openapi.json").get_json()
    set_champion(serving_settings, model_store["versions"]["other_schema"])
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    refused = client.post("/admin/reload", headers=auth)
    assert refused.get_json()["status"] == "refused"
    conforms(document, "/admin/reload", "post", refused)
    again = client.post("/admin/reload", headers=auth)
    conforms(document, "/admin/reload", "post", again)
    conforms(document, "/readyz", "get", client.get("/readyz"))
    conforms(document, "/v1/model", "get", client.get("/v1/model"))
    disabled = make_app(admin_token="").test_client().post("/admin/reload", headers=auth)
    assert disabled.status_code == 503
    conforms(document, "/admin/reload", "post", disabled)


# ------------------------------------------------------------------------ /docs
ASSET = re.compile(r'(?:src|href)="([^"]+)"')


def test_docs_page_uses_only_bundled_assets(client):
    resp = client.get("/docs", follow_redirects=True)
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    assets = ASSET.findall(page)
    assert len(assets) >= 4 and all(a.startswith("/docs/") for a in assets), assets
    assert "//" not in "".join(assets)
    assert '"url": "/openapi.json"' in page and '"validatorUrl": null' in page
    for asset in assets:
        got = client.get(asset)
        assert got.status_code == 200 and len(got.data) > 100, asset


@pytest.mark.parametrize(
    "path", ["/docs/../serving/app.py", "/docs/%2e%2e/%2e%2e/pyproject.toml", "/docs/nope.js",
             "/docs/..%2f..%2fREADME.md", "/docs/%ff%fe"],
)  # fmt: skip
def test_docs_refuses_paths_outside_its_assets(client, path):
    resp = client.get(path)
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"
