"""Schema-driven fuzz of the real service: Schemathesis reads /openapi.json from a gunicorn
service (2 workers, a trained champion, real Postgres) and sends every operation
:data:`CASES` generated requests of valid data and as many of invalid data.

Every answer must be: not a 5xx; documented (status, content type, and for a 2xx the body's
schema); a 4xx with the JSON error body. A valid /v1/score body must be accepted (the
document promises no more than the validators take). Afterwards the service still answers,
and the rows in ``predictions`` are exactly the predictions it acknowledged.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
import requests
import schemathesis
from conftest import ADMIN_TOKEN, wait_logged
from hypothesis import HealthCheck, Phase, given, settings
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from fraud_lib import store

pytestmark = pytest.mark.slow

CASES = 1000  # per operation and generation mode
MAX_BATCH = 4  # small batches: more requests per second, and 413s to answer
DOC_URI = "urn:fraudloop:openapi"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip
HYPOTHESIS = settings(
    max_examples=CASES,
    deadline=None,
    database=None,  # no .hypothesis directory in the repo
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)


class Fuzz:
    """One operation's requests in one generation mode, and what the service answered."""

    def __init__(self, url: str, document: dict[str, Any]) -> None:
        self.url = url
        self.session = requests.Session()
        registry = Registry().with_resource(DOC_URI, Resource.opaque(document))
        ref = {"$ref": f"{DOC_URI}#/components/schemas/ErrorBody"}
        self.error_body = Draft202012Validator(ref, registry=registry)
        self.acked: list[str] = []
        self.sent: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.seconds: dict[str, float] = {}

    def check_error_body(self, response: schemathesis.Response, label: str) -> None:
        """A 4xx answer is JSON holding the error body, whatever its status."""
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/json"), (label, content_type, response.text)
        errors = list(self.error_body.iter_errors(response.json()))
        assert not errors, f"{label}: {response.status_code} {response.text[:300]}"

    def run(self, operation: Any, mode: GenerationMode) -> None:
        label = f"{operation.method.upper()} {operation.path} {mode.value}"
        checks = [*CHECKS, positive_data_acceptance] if operation.path == "/v1/score" else CHECKS

        @HYPOTHESIS
        @given(case=operation.as_strategy(generation_mode=mode))
        def send(case: schemathesis.Case) -> None:
            if mode is GenerationMode.POSITIVE:
                unique_ids(case.body)
            response = case.call(base_url=self.url, session=self.session, timeout=30)
            self.sent[label] += 1
            self.statuses[(label, response.status_code)] += 1
            if response.status_code == 200 and operation.path == "/v1/score":
                body = response.json()
                self.acked += [p["prediction_id"] for p in body.get("predictions", [body])]
            if 400 <= response.status_code < 500:
                self.check_error_body(response, label)
            case.validate_response(response, checks=checks)

        started = time.monotonic()
        send()
        self.seconds[label] = round(time.monotonic() - started, 1)


def unique_ids(body: Any) -> None:
    """Drop repeated transaction ids from a generated batch: their uniqueness is the one rule
    of a valid batch that JSON Schema cannot state (the document says it in words)."""
    if not isinstance(body, dict) or not isinstance(body.get("transactions"), list):
        return
    seen: set[str] = set()
    for record in body["transactions"]:
        tx = record.get("transaction_id") if isinstance(record, dict) else None
        if tx is not None and str(tx) in seen:
            del record["transaction_id"]
        elif tx is not None:
            seen.add(str(tx))


def test_schemathesis_fuzz_of_the_gunicorn_service(start_service, pg_engine):
    service = start_service(workers=2, FRAUD_MAX_BATCH=str(MAX_BATCH))
    workers = sorted(service.worker_pids())
    document = requests.get(service.url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    fuzz = Fuzz(service.url, document)
    operations = {r.ok().path: r.ok() for r in schema.get_all_operations()}
    for operation in operations.values():
        raw = operation.definition.raw
        inputs = {"requestBody", "parameters", "security"} & raw.keys()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[: 2 if inputs else 1]:
            fuzz.run(operation, mode)  # no input: nothing to make invalid
    print(
        json.dumps({"sent": fuzz.sent, "seconds": fuzz.seconds, "acked": len(fuzz.acked)}, indent=1)
    )
    print(sorted(fuzz.statuses.items()))
    for label in ("POST /v1/score", "POST /v1/labels", "POST /admin/reload"):
        for mode in ("positive", "negative"):
            assert fuzz.sent[f"{label} {mode}"] >= CASES, (label, mode, fuzz.sent)
    assert fuzz.statuses[("POST /v1/score positive", 200)] >= CASES
    assert requests.get(service.url + "/readyz", timeout=10).status_code == 200
    assert sorted(service.worker_pids()) == workers  # no worker died or was replaced
    reload = operations["/admin/reload"].Case(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    response = reload.call(base_url=service.url, timeout=30)
    assert response.status_code == 200  # the generated tokens were all wrong: 401
    reload.validate_response(response, checks=CHECKS)
    fuzz.session.close()  # no idle keep-alive connection for the graceful stop to wait on
    assert len(set(fuzz.acked)) == len(fuzz.acked)
    wait_logged(pg_engine, fuzz.acked, timeout=60)
    with pg_engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT count(*) FROM predictions").scalar_one()
    assert rows == len(fuzz.acked) == store.count_predictions_by_ids(pg_engine, fuzz.acked)
    assert "Traceback" not in service.log(), service.log()[-3000:]
