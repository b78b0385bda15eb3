"""The official OpenAI SDK against `dualpath up`: gateway and simulated workers as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.procs import dualpath, free_port, running
from tests.support.tiny_tokenizer import write_tiny_tokenizer

pytestmark = pytest.mark.slow

MODEL = "tiny"
BODY_LIMIT = 64 * 1024
TOOL = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file of the repository",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "max_lines": {"type": "integer"}},
            "required": ["path"],
        },
    },
}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    port = free_port()
    cmd = dualpath("up", "--port", str(port), "--time-scale", "0.05")
    env = {"DUALPATH_LIMITS_MAX_BODY_BYTES": str(BODY_LIMIT)}
    with running(cmd, f"http://127.0.0.1:{port}/ready", timeout=90, env=env):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=30) as c:
        yield c


def test_models_come_from_the_workers(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say something."}], max_tokens=12
    )
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.prompt_tokens_details is not None
    assert isinstance(reply.usage.prompt_tokens_details.cached_tokens, int)


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Stream please."}],
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 10
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens is not None


def test_chat_streaming_without_usage_gets_none(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True
    )
    chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks)


def test_second_turn_reports_cached_prefix(client: openai.OpenAI) -> None:
    history = [
        {"role": "system", "content": "You are a coding agent. " * 60},
        {"role": "user", "content": "List the files."},
    ]
    first = client.chat.completions.create(model=MODEL, messages=history, max_tokens=4)
    assert first.choices[0].message.content is not None
    history += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Now open the first one."},
    ]
    second = client.chat.completions.create(model=MODEL, messages=history, max_tokens=4)
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached is not None and 0 < cached < second.usage.prompt_tokens


def test_completions_streaming_and_not(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8)
    assert reply.choices[0].text and reply.usage is not None
    stream = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=8, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices)


def test_same_seed_same_output(client: openai.OpenAI) -> None:
    def ask() -> str | None:
        msgs = [{"role": "user", "content": "Pick words."}]
        r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, seed=7)
        return r.choices[0].message.content

    assert ask() == ask()


def test_tool_call_round_trip(client: openai.OpenAI) -> None:
    messages: list[dict[str, object]] = [{"role": "user", "content": "Open the README."}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "read_file"
    args = json.loads(call.function.arguments)
    assert isinstance(args["path"], str)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "# dualpath-gateway"},
    ]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[TOOL])
    assert second.choices[0].message.content
    assert second.choices[0].finish_reason in ("stop", "length")


def test_streamed_tool_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Open it."}], tools=[TOOL], stream=True
    )
    chunks = list(stream)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    assert calls and calls[0].function and calls[0].function.name == "read_file"
    assert "path" in json.loads(arguments)


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"model": "no-such-model"}, openai.NotFoundError, "model"),
        ({"messages": []}, openai.BadRequestError, "messages"),
        ({"max_tokens": -1}, openai.BadRequestError, "max_tokens"),
        ({"max_tokens": 10**9}, openai.BadRequestError, "max_tokens"),
        ({"temperature": 9}, openai.BadRequestError, "temperature"),
    ],
)
def test_errors_surface_as_sdk_exceptions(
    client: openai.OpenAI, kwargs: dict[str, object], error: type[Exception], param: str
) -> None:
    args: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(error) as info:
        client.chat.completions.create(**{**args, **kwargs})  # type: ignore[call-overload]
    assert isinstance(info.value, openai.APIStatusError)
    assert info.value.body is not None and info.value.body["param"] == param  # type: ignore[index]


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"{not json", {"content-type": "application/json"}, 400),
        (
            b'{"model": "tiny", "messages": [{"role": "user"',
            {"content-type": "application/json"},
            400,
        ),
        (b'{"model": "tiny"}', {"content-type": "application/json"}, 400),
        (b'{"model": "tiny", "messages": "hi"}', {"content-type": "application/json"}, 400),
        (b"model=tiny", {"content-type": "application/x-www-form-urlencoded"}, 415),
        (b'{"model": "tiny", "messages": []}', {}, 415),
        (b'{"a": "' + b"x" * BODY_LIMIT + b'"}', {"content-type": "application/json"}, 413),
    ],
)
def test_bad_input_status_and_shape(
    base_url: str, content: bytes, headers: dict[str, str], status: int
) -> None:
    r = httpx.post(base_url + "/chat/completions", content=content, headers=headers)
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_unknown_route_and_method_are_openai_shaped(base_url: str) -> None:
    r = httpx.get(base_url + "/nowhere")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(base_url + "/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_up_stops_every_child_on_signal(signum: int) -> None:
    port = free_port()
    cmd = dualpath("up", "--port", str(port), "--prefill", "1", "--decode", "1")
    with running(cmd, f"http://127.0.0.1:{port}/ready", timeout=90) as up:
        workers = [w["url"] for w in httpx.get(f"http://127.0.0.1:{port}/ready").json()["workers"]]
        os.kill(up.pid, signum)  # the launcher alone, as Ctrl-C or a service manager would
        try:
            assert up.wait(30) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("dualpath up did not stop")
    for url in [*workers, f"http://127.0.0.1:{port}"]:
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)


def test_up_with_a_huggingface_tokenizer(tmp_path: Path) -> None:
    port = free_port()
    tokenizer = write_tiny_tokenizer(tmp_path / "tokenizer.json")
    cmd = dualpath("up", "--port", str(port), "--decode", "1", "--tokenizer", str(tokenizer))
    with running(cmd, f"http://127.0.0.1:{port}/ready", timeout=90):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hello world"}]}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] > 0
