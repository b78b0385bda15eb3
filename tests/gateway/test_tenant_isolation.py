"""Tenants through `dualpath up` with an API keys file: the same prompt is cached per tenant only
(no timing or `cached_tokens` signal crosses tenants), sessions are per tenant (another's id is
404), and neither a key nor prompt text reaches any process's log, even at debug level."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import Request
from fastapi.testclient import TestClient

from engines.sim_worker.prefix_cache import PrefixCache
from gateway.api_keys import hash_key
from gateway.app import create_app
from gateway.auth import admit
from gateway.request_parsing import parse_request
from gateway.scheduler.request import RequestId, SchedRequest
from gateway.session_turns import SessionTurns
from gateway.settings import load_settings
from gateway.tenancy import TENANT_HEADER
from tests.support.procs import dualpath, free_port, running

MODEL = "tiny"
ACME_ADMIN = "sk-acme-admin-5b0c1f2e9d8a7c6b"
ACME_USER = "sk-acme-user-1e2d3c4b5a697887"
GLOBEX_ADMIN = "sk-globex-admin-99aa88bb77cc66dd"
MARKER = "zanzibar-quokka-7731"
"""Distinctive prompt text that must never appear in a log."""
KEYS_ENV = {"DUALPATH_API_KEYS": f"acme:{ACME_ADMIN}:admin,acme:{ACME_USER},globex:{GLOBEX_ADMIN}"}
CONTEXT = f"You maintain the {MARKER} repository; read its files and fix its tests. " * 40


@dataclass(frozen=True, slots=True)
class Up:
    base: str
    workdir: Path
    """Where `dualpath up` (started with TMPDIR here) keeps every child's log."""
    output: Path
    """`dualpath up`'s own output."""
    keys: Path


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("tenants")
    keys = tmp / "keys.yaml"
    entries = [
        {"tenant": "acme", "key_sha256": hash_key(ACME_ADMIN), "admin": True},
        {"tenant": "acme", "key_sha256": hash_key(ACME_USER)},
        {"tenant": "globex", "key_sha256": hash_key(GLOBEX_ADMIN), "admin": True},
    ]
    keys.write_text(yaml.safe_dump({"keys": entries}))
    port = free_port()
    cmd = dualpath("up", "--port", str(port), "--decode", "1", "--time-scale", "0")
    cmd += ["--api-keys-file", str(keys)]
    # Debug logging everywhere: whatever a process would ever log is in the files checked.
    env = {"TMPDIR": str(tmp), "DUALPATH_LOG_LEVEL": "debug"}
    output = tmp / "up.log"
    base = f"http://127.0.0.1:{port}"
    with running(cmd, base + "/ready", timeout=90, env=env, log=output):
        (workdir,) = tmp.glob("dualpath-up-*")
        yield Up(base, workdir, output, keys)


def chat(
    up: Up, key: str, content: str, session: str | None = None, **extra: Any
) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": CONTEXT}, {"role": "user", "content": content}],
        "max_tokens": 8,
        **extra,
    }
    headers = {"authorization": f"Bearer {key}"}
    if session is not None:
        headers["x-session-id"] = session
    return httpx.post(up.base + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def cached(reply: httpx.Response) -> int:
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    return int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


def test_chain_roots_are_salted_per_tenant() -> None:
    turns = SessionTurns.from_settings(load_settings(env={}))
    acme = turns.chain_root({TENANT_HEADER: "acme"}, MODEL)
    assert acme == turns.chain_root({TENANT_HEADER: "acme"}, MODEL)
    assert acme != turns.chain_root({TENANT_HEADER: "globex"}, MODEL)
    assert acme != turns.chain_root({TENANT_HEADER: "acme"}, "other-model")


def _same_prompt_across_tenants(up: Up, question: str) -> None:
    assert cached(chat(up, ACME_ADMIN, question)) == 0
    warm = cached(chat(up, ACME_ADMIN, question))
    assert warm > 0  # acme's second ask loads its prefix
    # globex sends the very same prompt: nothing of acme's is loaded, so nothing is learnt.
    assert cached(chat(up, GLOBEX_ADMIN, question)) == 0
    assert cached(chat(up, GLOBEX_ADMIN, question)) == warm  # then its own cache works alike
    # Another key of acme's is the same tenant: it shares acme's cache.
    assert cached(chat(up, ACME_USER, question)) == warm


@pytest.mark.slow
def test_the_same_prompt_is_cached_for_its_own_tenant_only(up: Up) -> None:
    """Through the KV store: block keys are salted per tenant (the `dualpath.kv_root`)."""
    _same_prompt_across_tenants(up, "Which test fails first?")


@pytest.mark.slow
def test_engine_prefix_caches_are_namespaced_per_tenant_too(
    up: Up,
) -> None:
    """Without a KV store only the workers' own prefix caches hold prefixes (SGLang's radix
    cache): the gateway's per-tenant `extra_key` keeps them apart as well."""
    port = free_port()
    cmd = dualpath("up", "--port", str(port), "--decode", "1", "--time-scale", "0")
    cmd += ["--kv", "none", "--api-keys-file", str(up.keys)]
    base = f"http://127.0.0.1:{port}"
    with running(cmd, base + "/ready", timeout=90):
        _same_prompt_across_tenants(Up(base, up.workdir, up.output, up.keys), "Any flaky test?")


def _extra_key_sent(env: dict[str, str], key: str, own: str | None = None) -> object:
    """The `extra_key` a request would carry upstream, through the app's own edge and `admit`."""
    settings = load_settings(env=env)
    app = create_app(settings)

    @app.post("/v1/echo-extra-key")
    async def echo(request: Request) -> dict[str, object]:
        parsed = parse_request("/v1/chat/completions", await request.body(), settings.limits)
        await admit(request, parsed, SchedRequest(RequestId("r"), 0, 10, 10, 0.0, 4.0, 0.05))
        return {"present": "extra_key" in parsed.body, "extra_key": parsed.body.get("extra_key")}

    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    if own is not None:
        body["extra_key"] = own
    headers = {"authorization": f"Bearer {key}"}
    with TestClient(app) as client:
        return client.post("/v1/echo-extra-key", json=body, headers=headers).json()


def test_keyed_requests_carry_their_tenants_engine_cache_namespace() -> None:
    acme = _extra_key_sent(KEYS_ENV, ACME_ADMIN)
    assert acme["present"] and len(acme["extra_key"]) == 32
    assert _extra_key_sent(KEYS_ENV, ACME_USER) == acme  # a tenant's keys share its namespace
    assert _extra_key_sent(KEYS_ENV, GLOBEX_ADMIN)["extra_key"] != acme["extra_key"]
    # A client's own extra_key stays, behind the tenant's: it can only narrow its namespace.
    assert _extra_key_sent(KEYS_ENV, ACME_USER, "mine")["extra_key"] == acme["extra_key"] + "mine"
    # No keys configured: the body goes as it came.
    assert _extra_key_sent({}, ACME_USER) == {"present": False, "extra_key": None}
    assert _extra_key_sent({}, ACME_USER, "mine")["extra_key"] == "mine"


def test_prefix_cache_namespaces_share_no_page() -> None:
    cache = PrefixCache(page_size=4, max_pages=64)
    prompt = list(range(17))
    cache.insert(prompt, "tenant-a")
    assert cache.match(prompt, "tenant-a") == 16
    assert cache.match(prompt, "tenant-b") == 0
    assert cache.match(prompt) == 0  # no namespace is a namespace of its own


@pytest.mark.slow
def test_sessions_are_per_tenant(up: Up) -> None:
    reply = chat(up, ACME_ADMIN, "Start a session.")
    assert reply.status_code == 200, reply.text
    sid = reply.headers["x-session-id"]

    def get(key: str, method: str = "GET", path: str = f"/v1/sessions/{sid}") -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"}
        return httpx.request(method, up.base + path, headers=headers, timeout=10)

    assert get(ACME_ADMIN).json()["id"] == sid
    for method in ("GET", "DELETE"):
        other = get(GLOBEX_ADMIN, method)
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    assert sid not in {s["id"] for s in get(GLOBEX_ADMIN, path="/v1/sessions").json()["data"]}
    assert sid in {s["id"] for s in get(ACME_ADMIN, path="/v1/sessions?limit=100").json()["data"]}
    assert get(ACME_USER).status_code == 403  # acme's, but not an admin key
    assert get(ACME_ADMIN).status_code == 200  # globex's DELETE changed nothing
    # The same explicit session id claimed by two tenants names two separate sessions.
    for key, turns in ((ACME_ADMIN, 1), (GLOBEX_ADMIN, 2)):
        for i in range(turns):
            assert chat(up, key, f"Named {i}.", session="agent-7").status_code == 200
    assert get(ACME_ADMIN, path="/v1/sessions/agent-7").json()["turns"] == 1
    assert get(GLOBEX_ADMIN, path="/v1/sessions/agent-7").json()["turns"] == 2


@pytest.mark.slow
def test_no_key_and_no_prompt_text_in_any_log(up: Up) -> None:
    wrong = "sk-wrong-key-that-must-not-be-logged-42"
    assert chat(up, wrong, MARKER).status_code == 401
    bad = httpx.post(
        up.base + "/v1/chat/completions",
        content=b'{"model": "tiny", "messages": [{"role": "user", "content": "' + MARKER.encode(),
        headers={"authorization": f"Bearer {ACME_USER}", "content-type": "application/json"},
        timeout=10,
    )
    assert bad.status_code == 400
    assert cached(chat(up, ACME_USER, f"Say {MARKER} back.")) >= 0
    streamed = chat(up, GLOBEX_ADMIN, f"Stream {MARKER}.", stream=True)
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    assert httpx.get(up.base + "/debug/decisions", headers={"authorization": "Bearer x"}).is_error
    logs = [up.output, *sorted(up.workdir.glob("*.log"))]
    assert any(p.name == "gateway.log" for p in logs), logs
    secrets = [ACME_ADMIN, ACME_USER, GLOBEX_ADMIN, wrong, MARKER, "zanzibar"]
    for path in logs:
        text = path.read_bytes().decode(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{secret!r} appears in {path.name}"
