"""schemathesis against the published /openapi.json of a live `planck serve`: generated requests (fixed seed,
a bounded number per operation) never get a 5xx, and every response matches the schema the server publishes."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a test extra: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance, status_code_conformance  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 50  # per operation; derandomized, so every run sends the same requests


def test_generated_requests_get_no_5xx_and_match_the_schema(chat_server):
    # (schemathesis's own pytest plugin does not load under this pytest: its operations are driven here.)
    schema = schemathesis.openapi.from_url(f"{chat_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models", "GET /health", "GET /metrics"}
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(checks=CHECKS, timeout=60)

        check()
