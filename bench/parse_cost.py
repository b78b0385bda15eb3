"""Gateway-side cost of parsing one chat request: bytes → a validated, limit-checked request.

Builds a coding agent's chat body of about `--tokens` tokens (a system prompt, tool schemas,
then assistant turns with a tool call each and tool results of source code), and times
`gateway.request_parsing.parse_request` on it: JSON parse, the input-hardening scan (depth,
duplicate keys, number range), schema validation and the limits. Prints one JSON object.

    .venv/bin/python bench/parse_cost.py
    .venv/bin/python bench/parse_cost.py --tokens 64000 --repeats 400 --out parse_cost.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.request_parsing import parse_request  # noqa: E402
from gateway.settings import LimitsConfig  # noqa: E402

CODE = (
    'def handler(event: dict[str, Any]) -> None:\n    """Route {kind}: retry on 503."""\n'
    '    url = f"http://svc:{port}/v1/items?id={id}"\n    log.info("got %s: %r", url, event)\n'
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} a file in the repository",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "relative path"},
                    "args": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["path"],
            },
        },
    }
    for name in ("read", "write", "edit", "grep", "run_tests", "list", "diff", "search")
]


def text(tokens: int, seed: int) -> str:
    """About `tokens` tokens (~4 characters each) of code-like text, colons and quotes included."""
    chunk = CODE.replace("{kind}", f"k{seed}")
    return (chunk * (tokens * 4 // len(chunk) + 1))[: tokens * 4]


def chat_body(tokens: int) -> dict[str, Any]:
    """A coding agent's request: 2K-token system prompt, turns of ~176 + ~429 tokens."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": text(2000, 0)},
        {"role": "user", "content": text(200, 1)},
    ]
    size, i = 2200, 0
    while size < tokens:
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "read", "arguments": json.dumps({"path": f"src/m{i}.py"})},
        }
        messages.append({"role": "assistant", "content": text(150, i), "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": text(429, i)})
        size, i = size + 605, i + 1
    return {
        "model": "ds-v3.2",
        "messages": messages,
        "tools": TOOLS,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 1024,
        "temperature": 0.2,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=64_000, help="prompt size in tokens")
    p.add_argument("--repeats", type=int, default=300, help="timed parses")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    raw = orjson.dumps(chat_body(args.tokens))
    limits = LimitsConfig()
    for _ in range(20):  # warm-up
        parse_request("/v1/chat/completions", raw, limits)
    gc.collect()
    times: list[float] = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        parse_request("/v1/chat/completions", raw, limits)
        times.append(time.perf_counter() - t0)
    loads: list[float] = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        orjson.loads(raw)
        loads.append(time.perf_counter() - t0)
    us = sorted(t * 1e6 for t in times)
    result = {
        "command": " ".join([sys.executable, *sys.argv]),
        "tokens": args.tokens,
        "body_bytes": len(raw),
        "messages": len(orjson.loads(raw)["messages"]),
        "repeats": args.repeats,
        "parse_request_us": {
            "min": round(us[0], 1),
            "p50": round(statistics.median(us), 1),
            "p90": round(us[int(0.9 * len(us))], 1),
        },
        "orjson_loads_only_us_p50": round(statistics.median(loads) * 1e6, 1),
    }
    text_out = json.dumps(result, indent=2)
    print(text_out)
    if args.out:
        args.out.write_text(text_out + "\n")


if __name__ == "__main__":
    main()
