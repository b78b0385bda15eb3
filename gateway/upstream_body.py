"""The body both PD legs receive, as SGLang's router builds it: the client's JSON plus
`bootstrap_host`, `bootstrap_port` and a random 63-bit `bootstrap_room` (one per item for
batches), the `rid` used to abort it, and the read-path extension for workers that take it.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import orjson

from gateway.kv_route import KVRoute
from gateway.placement import PDPair
from gateway.request_parsing import ParsedRequest


def upstream_body(
    req: ParsedRequest, pair: PDPair, kv: KVRoute | None, rng: random.Random
) -> tuple[dict[str, Any], str | None]:
    """The body both workers receive, and the rid used to abort it (None for batches)."""
    body = dict(req.body)
    extension = kv.extension(pair) if kv is not None else None
    if extension is not None:
        body["dualpath"] = extension
    host, port = pair.prefill.bootstrap_host, pair.prefill.bootstrap_port
    room = rng.getrandbits(63)  # a fresh room per try: a retry never meets a stale one
    if req.batch_size > 1:
        n = req.batch_size
        body["bootstrap_host"] = [host] * n
        body["bootstrap_port"] = [port] * n
        body["bootstrap_room"] = [room + i for i in range(n)]
    else:
        body["bootstrap_host"] = host
        body["bootstrap_port"] = port
        body["bootstrap_room"] = room
    rid = None
    if req.batch_size == 1:
        rid = body.setdefault("rid", uuid.uuid4().hex)
    if req.stream:  # usage is always wanted; the relay drops it if the client did not ask
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body, rid if isinstance(rid, str) else None


def encode_body(body: dict[str, Any], messages_json: bytes | None) -> bytes:
    """`orjson.dumps(body)`, with the messages spliced in from `messages_json` when given."""
    if messages_json is None or "messages" not in body:
        return orjson.dumps(body)
    rest = orjson.dumps({k: v for k, v in body.items() if k != "messages"})
    tail = b"," + rest[1:] if len(rest) > 2 else b"}"
    return b'{"messages":' + messages_json + tail
