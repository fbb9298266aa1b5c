"""Schemathesis against the live API (uvicorn on loopback): generated requests for every operation
in /openapi.json, a bounded number each, with a token of every scope. No answer may be a 5xx, and
every answer must match the schema the API publishes for it."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.conftest import TOKEN, ApiServer

EXAMPLES = 12  # per operation: bounded for make test


def test_no_server_error_and_every_answer_as_published(api: ApiServer) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    failures: dict[str, str] = {}
    # An event stream never ends, so a generated request to one would never be answered whole; the
    # status stream has its own tests (tests/status).
    operations = [op for op in (result.ok() for result in schema.get_all_operations())
                  if "text/event-stream" not in op.definition.raw["responses"].get("200", {}).get("content", {})]
    assert len(operations) >= 15, [op.label for op in operations]
    for operation in operations:
        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(HealthCheck))
        def run(case) -> None:  # noqa: ANN001
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                                   checks=[not_a_server_error, response_schema_conformance])

        try:
            run()
        except Exception as exc:  # noqa: BLE001 - every operation's failure, reported together
            failures[operation.label] = str(exc)[:1500]
    assert not failures, "\n\n".join(f"{label}:\n{why}" for label, why in failures.items())
