"""The live gateway's OpenAPI document, fuzzed by schemathesis: whatever a client sends that
the document allows (or not), no answer is a 5xx and every answer matches its schema.

A gateway with an API key runs beside the shared stack, so the fuzzing owner's state
(options, gallery) stays its own. Generation bodies are clamped to tiny jobs (64×64, two
steps) so the run stays short; everything else is as generated.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.stack_fixtures import ExtraProcess, RunningStack, start_gateway

pytestmark = [pytest.mark.integration]

KEY = "fuzz-key-000001"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_EXAMPLES = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
TINY = {"width": 64, "height": 64, "steps": 2, "batch_size": 1, "n_iter": 1}


@pytest.fixture(scope="module")
def fuzz_gateway(
    running_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExtraProcess]:
    extra = start_gateway(
        running_stack,
        tmp_path_factory.mktemp("fuzz-gateway"),
        api_keys=f"{KEY}:fuzz",
        rate_limit_per_minute=0,
        request_timeout_seconds=60,
    )
    try:
        yield extra
    finally:
        extra.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_gateway: ExtraProcess) -> schemathesis.BaseSchema:
    loaded = schemathesis.openapi.from_url(f"{fuzz_gateway.base_url}/openapi.json")
    loaded.hook(map_body)
    return loaded


def map_body(context: schemathesis.HookContext, body: object) -> object:
    """Generation bodies become tiny jobs; the fields' validity is left as generated."""
    if isinstance(body, dict) and context.operation is not None:
        path = context.operation.path
        if path in ("/v1/generations", "/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
            body.update(TINY)
            body.pop("hires", None)
            body["enable_hr"] = False
        if path == "/sdapi/v1/extra-single-image":
            body["upscaling_resize"] = 1
    return body


def test_no_5xx_and_every_answer_matches_its_schema(api_schema: schemathesis.BaseSchema) -> None:
    """Every operation of the document, each with its own generated cases.

    (schemathesis' pytest plugin does not load with this pytest, so the operations are
    walked here, each one a Hypothesis test of its own.)
    """
    failures: dict[str, str] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 40
    for operation in operations:
        try:
            _fuzz(operation)
        except Exception as error:  # report every failing operation, not only the first
            failures[operation.label] = str(error)[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


def _fuzz(operation: schemathesis.APIOperation) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=AUTH, timeout=120, checks=CHECKS)

    run()
