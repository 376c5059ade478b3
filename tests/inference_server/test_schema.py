"""Schemathesis against the running service's own OpenAPI description: generated requests to every
operation (for ``/segment``, generated uploads: the error paths) get documented answers, never a 5xx
other than the documented 503/504, with and without the API key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from testkit import write_tiny_weights
from tests.inference_server.test_hostile import serving
from tests.inference_server.test_server import API_KEY


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory) -> Iterator[schemathesis.BaseSchema]:
    weights = write_tiny_weights(tmp_path_factory.mktemp("weights"))
    temp = tmp_path_factory.mktemp("server_tmp")
    with serving(weights, temp, api_key=API_KEY, max_upload_mb="1", idle_timeout_s="2") as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")
    assert not any(temp.iterdir()), "temporary files left behind"


def call_and_check(case, headers: dict[str, str]) -> None:
    response = case.call(headers=headers, timeout=60)
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance, response_schema_conformance])


def check_every_operation(schema: schemathesis.BaseSchema, headers: dict[str, str], examples: int) -> list[str]:
    """Run ``examples`` generated cases through each operation; returns the operations checked."""
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            call_and_check(case, headers)

        check()
        checked.append(operation.label)
    return checked


def test_every_operation_answers_as_documented_with_the_key(api_schema):
    checked = check_every_operation(api_schema, {"X-API-Key": API_KEY}, examples=30)
    assert {"GET /health", "GET /ready", "GET /info", "POST /segment"} <= set(checked), checked


def test_every_operation_answers_as_documented_without_the_key(api_schema):
    check_every_operation(api_schema, {}, examples=15)
