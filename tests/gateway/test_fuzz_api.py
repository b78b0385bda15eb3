"""Fuzzing the gateway from its own OpenAPI schema with schemathesis, through `dualpath up`.

Bodies that fit the schema (positive) and bodies that break it (negative) go to the generation
routes of a real gateway with simulated workers, and generated queries to its read-only routes:
no answer may be a 5xx, and every answer must fit the schema it documents. The limits are set
low through `DUALPATH_LIMITS_*` so that generated `max_tokens` and `n` keep the workers quick.
Examples are few and derandomized: a bounded, repeatable run, under a minute on two cores.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.schemas import BaseSchema

from tests.support.procs import dualpath, free_port, running

pytestmark = pytest.mark.slow

MODEL = "tiny"
LIMITS = {
    "DUALPATH_LIMITS_MAX_OUTPUT_TOKENS": "32",
    "DUALPATH_LIMITS_MAX_N": "4",
    "DUALPATH_LIMITS_MAX_MESSAGES": "64",
}
GENERATION = ("/v1/chat/completions", "/v1/completions")
# Read-only routes worth fuzzing (queries, path ids); writes to /workers and sessions are left
# to their own tests: a fuzzer deleting workers would only test that it can.
READ_ONLY = ("/v1/models", "/health", "/ready", "/v1/sessions", "/debug/decisions")
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture(scope="module")
def api() -> Iterator[BaseSchema]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = dualpath("up", "--port", str(port), "--prefill", "1", "--decode", "1",
                   "--time-scale", "0", "--kv", "none")  # fmt: skip
    with running(cmd, base + "/ready", timeout=90, env=LIMITS):
        yield schemathesis.openapi.from_url(base + "/openapi.json")


def _fuzz(schema: BaseSchema, mode: GenerationMode, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=schema.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        # Random model names would all stop at 404: send the served one, to reach the workers.
        if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
            case.body["model"] = MODEL
        case.call_and_validate(checks=CHECKS, timeout=30)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("path", GENERATION)
def test_generation_routes_give_no_5xx_and_fit_their_schema(
    api: BaseSchema, path: str, mode: GenerationMode
) -> None:
    _fuzz(api.include(path=path, method="POST"), mode, examples=60)


def test_read_only_routes_give_no_5xx_and_fit_their_schema(api: BaseSchema) -> None:
    _fuzz(api.include(path=list(READ_ONLY), method="GET"), GenerationMode.POSITIVE, examples=40)
    _fuzz(api.include(path=list(READ_ONLY), method="GET"), GenerationMode.NEGATIVE, examples=40)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
     ("/v1/completions", {"prompt": "hi"})],
)  # fmt: skip
def test_answers_fit_the_schema_streamed_or_not(
    api: BaseSchema, path: str, body: dict[str, object], stream: bool
) -> None:
    # Not left to chance: each kind of answer is held to its documented schema at least once.
    case = api[path]["POST"].Case(body={"model": MODEL, "max_tokens": 4, "stream": stream, **body})
    response = case.call_and_validate(checks=CHECKS, timeout=30)
    assert response.status_code == 200
    streamed = response.headers["content-type"][0].startswith("text/event-stream")
    assert streamed is stream


def test_schema_describes_the_request_bodies(api: BaseSchema) -> None:
    chat = api["/v1/chat/completions"]["POST"]
    (body,) = chat.body
    assert body.media_type == "application/json"
    assert {"model", "messages"} <= set(body.definition["schema"]["required"])
    assert "400" in chat.definition.raw["responses"]
