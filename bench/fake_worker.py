"""A minimal, very fast fake SGLang worker for overhead benchmarks.

One process, role ``prefill`` or ``decode``, raw asyncio Protocol on uvloop with httptools
parsing, no sleeps. It answers the OpenAI chat route (streaming and not), the health and info
routes a router or gateway probes, and ``/abort_request``. Nothing is generated: every answer is
a canned byte string with a fresh id, so the worker costs about as little CPU per request as a
Python process can, and whatever sits in front of it shows its own cost.

Run: ``python bench/fake_worker.py --role decode --port 30001``.

The decode does not wait for the prefill half (there is no KV transfer); the prefill answers its
1-token result (``finish_reason: "length"``), as a real prefill does in PD mode.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import time
from collections.abc import Callable

import httptools
import orjson

try:  # uvloop is what makes the fake cheap; fall back so a bare interpreter still runs it
    import uvloop
except ImportError:  # pragma: no cover - the project venv has uvloop
    uvloop = None  # type: ignore[assignment]

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


class Canned:
    """Pre-built response pieces, so a request costs a few byte joins and no JSON encoding."""

    def __init__(self, role: str, model: str, tokens: int, bootstrap_port: int) -> None:
        self.role = role
        self.model = model
        self.tokens = tokens if role == "decode" else 1
        self.created = int(time.time())
        self.info = self._info(bootstrap_port)
        self._ids = itertools.count(1)

    def _info(self, bootstrap_port: int) -> dict[str, bytes]:
        server_info = orjson.dumps(
            {
                "model_path": self.model,
                "served_model_name": self.model,
                "tokenizer_path": self.model,
                "tp_size": 1,
                "dp_size": 1,
                "page_size": 64,
                "disaggregation_mode": self.role,
                "disaggregation_transfer_backend": "fake",
                "disaggregation_bootstrap_port": bootstrap_port,
                "max_total_num_tokens": 512000,
                "max_req_input_len": 32760,
                "internal_states": [{"last_gen_throughput": 0.0}],
                "version": "fake-0",
            }
        )
        model_info = orjson.dumps(
            {
                "model_path": self.model,
                "tokenizer_path": self.model,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": "default",
            }
        )
        models = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "sglang",
                        "root": self.model,
                        "parent": None,
                        "max_model_len": 32768,
                    }
                ],
            }
        )
        get_load = orjson.dumps(
            [{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}]
        )
        loads = orjson.dumps(
            {
                "version": "fake-0",
                "loads": [
                    {
                        "dp_rank": 0,
                        "num_running_reqs": 0,
                        "num_waiting_reqs": 0,
                        "num_used_tokens": 0,
                        "max_total_num_tokens": 512000,
                        "token_usage": 0.0,
                    }
                ],
            }
        )
        return {
            "/server_info": server_info,
            "/get_server_info": server_info,
            "/model_info": model_info,
            "/get_model_info": model_info,
            "/v1/models": models,
            "/get_load": get_load,
            "/v1/loads": loads,
        }

    def _chunk_prefix(self) -> bytes:
        rid = f"fake-{os.getpid()}-{next(self._ids)}"
        return (
            f'{{"id":"{rid}","object":"chat.completion.chunk","created":{self.created},'
            f'"model":"{self.model}","choices":'
        ).encode()

    def stream_events(self, include_usage: bool) -> list[bytes]:
        """The SSE events of one streamed answer, each already framed as an HTTP chunk."""
        head = self._chunk_prefix()
        finish = b'"length"' if self.role == "prefill" else b'"stop"'
        events = [
            head + b'[{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]}'
        ]
        events += [
            head + b'[{"index":0,"delta":{"content":"tok%d "},"logprobs":null,'
            b'"finish_reason":null}]}' % i
            for i in range(self.tokens)
        ]
        events.append(
            head + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":' + finish + b"}]}"
        )
        if include_usage:
            events.append(
                head + b'[],"usage":{"prompt_tokens":8,"completion_tokens":%d,'
                b'"total_tokens":%d}}' % (self.tokens, self.tokens + 8)
            )
        framed = [_chunk(b"data: " + e + b"\n\n") for e in events]
        framed.append(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return framed

    def completion(self) -> bytes:
        rid = f"fake-{os.getpid()}-{next(self._ids)}"
        finish = "length" if self.role == "prefill" else "stop"
        content = "".join(f"tok{i} " for i in range(self.tokens))
        return orjson.dumps(
            {
                "id": rid,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": 8,
                    "completion_tokens": self.tokens,
                    "total_tokens": self.tokens + 8,
                },
            }
        )


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _head(status: int, content_type: bytes, length: int | None, keep_alive: bool) -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    conn = b"keep-alive" if keep_alive else b"close"
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s\r\nConnection: %s\r\n\r\n" % (
        status,
        _REASONS.get(status, b"OK"),
        content_type,
        framing,
        conn,
    )


class WorkerProtocol(asyncio.Protocol):
    """One client connection; requests are parsed by httptools and answered inline."""

    def __init__(self, canned: Canned, coalesce: bool) -> None:
        self.canned = canned
        self.coalesce = coalesce
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b"application/json", b'{"error":"bad request"}', keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.transport is None:
            return
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        keep_alive = self.parser.should_keep_alive()
        if method == b"POST" and path in ("/v1/chat/completions", "/v1/completions", "/generate"):
            self._generate(b"".join(self.body), keep_alive)
        elif method == b"GET" and path in ("/health", "/health_generate"):
            self._send(200, b"text/plain", b"", keep_alive)
        elif method == b"GET" and path in self.canned.info:
            self._send(200, b"application/json", self.canned.info[path], keep_alive)
        elif path in ("/abort_request", "/flush_cache"):
            self._send(200, b"text/plain", b"", keep_alive)
        else:
            self._send(404, b"application/json", b'{"error":"not found"}', keep_alive)
        if not keep_alive and self.transport is not None:
            self.transport.close()

    def _generate(self, raw: bytes, keep_alive: bool) -> None:
        try:
            req = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            self._send(400, b"application/json", b'{"error":"invalid json"}', keep_alive)
            return
        if not req.get("stream"):
            self._send(200, b"application/json", self.canned.completion(), keep_alive)
            return
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        events = self.canned.stream_events(include_usage)
        head = _head(200, b"text/event-stream", None, keep_alive)
        write = self.transport.write  # type: ignore[union-attr]
        if self.coalesce:
            write(head + b"".join(events))
            return
        # One write per event, like a server that flushes every token: the proxy in front sees
        # the same framing (many small segments) that a real stream gives it.
        write(head)
        for event in events:
            write(event)

    def _send(self, status: int, ctype: bytes, body: bytes, keep_alive: bool) -> None:
        if self.transport is not None:
            self.transport.write(_head(status, ctype, len(body), keep_alive) + body)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=("prefill", "decode"), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="fake-model", help="served_model_name")
    p.add_argument(
        "--tokens", type=int, default=16, help="content delta events per decode stream (default 16)"
    )
    p.add_argument(
        "--bootstrap-port",
        type=int,
        default=8998,
        help="reported as disaggregation_bootstrap_port (nothing listens there)",
    )
    p.add_argument(
        "--coalesce",
        action="store_true",
        help="write a whole stream in one send instead of one send per event",
    )
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    canned = Canned(args.role, args.model, args.tokens, args.bootstrap_port)
    loop = asyncio.get_running_loop()
    factory: Callable[[], WorkerProtocol] = lambda: WorkerProtocol(canned, args.coalesce)  # noqa: E731
    server = await loop.create_server(
        factory, args.host, args.port, backlog=4096, reuse_address=True, family=socket.AF_INET
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if uvloop is not None:
        uvloop.run(serve(args))
    else:  # pragma: no cover
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
