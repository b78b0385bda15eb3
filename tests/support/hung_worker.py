"""A worker that passes its health checks but never finishes an inference request.

It answers `GET /health`, `/server_info` and `/v1/models` like a decode worker, and accepts every
`POST`, then, by `--mode`:

- `hang`: never sends a byte (the gateway's first-byte timeout must fire);
- `head`: sends a 200 response head, then nothing (the between-chunks timeout fires before the
  first byte reached the client);
- `stall`: sends a 200 response head and one SSE chunk, then nothing more (the between-chunks
  timeout must fire after the first byte).

Plain asyncio streams, so nothing in it can time out on its own.
Run: `python -m tests.support.hung_worker --port P [--mode stall] [--model tiny]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json

CHUNK = b'data: {"id":"stall","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"x"},"finish_reason":null}]}\n\n'  # noqa: E501


def _json(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _info(model: str) -> dict[str, object]:
    return {
        "served_model_name": model,
        "model_path": model,
        "disaggregation_mode": "decode",
        "page_size": 64,
    }


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return method, path


async def _serve(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str, model: str
) -> None:
    try:
        while True:  # keep-alive: health checks reuse the connection
            method, path = await _read_request(reader)
            if method == "GET":
                if path in ("/server_info", "/get_server_info"):
                    writer.write(_json(_info(model)))
                elif path == "/v1/models":
                    writer.write(_json({"object": "list", "data": [{"id": model}]}))
                else:
                    writer.write(_json({}))
                await writer.drain()
                continue
            if mode in ("head", "stall"):
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
            if mode == "stall":
                writer.write(f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n")
            await writer.drain()
            await reader.read()  # nothing more: wait until the client gives up and closes
            return
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int, mode: str, model: str) -> None:
    server = await asyncio.start_server(lambda r, w: _serve(r, w, mode, model), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=("hang", "head", "stall"), default="hang")
    p.add_argument("--model", default="tiny")
    a = p.parse_args()
    asyncio.run(main(a.port, a.mode, a.model))
