"""API keys: the keys file and environment, `dualpath keys`, and what the app answers with keys
configured (401 / 403 / open paths) or without (open, as before). No workers are needed: the
gateway decides before any reaches a worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi import Request
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from gateway.api_keys import ApiKey, KeyRing, hash_key, keys_from_env, keys_from_file
from gateway.app import create_app
from gateway.cli import app as cli
from gateway.errors import ConfigError
from gateway.settings import load_settings
from gateway.tenancy import ANONYMOUS, TENANT_HEADER, open_tenant, tenant_of

USER_KEY = "sk-acme-user-0123456789abcdef"
ADMIN_KEY = "sk-ops-admin-0123456789abcdef"
WRONG_KEY = "sk-wrong-key-0123456789abcdef"
ENV = {"DUALPATH_API_KEYS": f"acme:{USER_KEY},ops:{ADMIN_KEY}:admin"}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def assert_openai_error(body: dict[str, object], code: str) -> None:
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code


# --- configuration ----------------------------------------------------------------------------


def test_a_keys_file_holds_digests_tenants_rights_and_limits(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    entries = [
        {"tenant": "acme", "key_sha256": hash_key(USER_KEY), "tokens_per_min": 500},
        {"tenant": "ops", "key_sha256": hash_key(ADMIN_KEY).upper(), "admin": True},
    ]
    path.write_text(yaml.safe_dump({"keys": entries}))
    keys = keys_from_file(path)
    assert keys == (
        ApiKey("acme", hash_key(USER_KEY), tokens_per_min=500),
        ApiKey("ops", hash_key(ADMIN_KEY), admin=True),
    )
    ring = KeyRing(keys)
    found = ring.find(ADMIN_KEY)
    assert found is not None and found.tenant == "ops" and found.admin
    assert ring.find(WRONG_KEY) is None
    assert ring.find(hash_key(USER_KEY)) is None  # the digest is not a key


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"tenant": "acme", "key": USER_KEY}, "unknown fields"),  # a plaintext key is refused
        ({"tenant": "acme", "key_sha256": "abc"}, "64 hex digits"),
        ({"tenant": "has space", "key_sha256": hash_key(USER_KEY)}, "tenant must be"),
        ({"tenant": "acme", "key_sha256": hash_key(USER_KEY), "admin": "yes"}, "admin"),
        ({"tenant": "acme", "key_sha256": hash_key(USER_KEY), "tokens_per_min": -1}, "non-neg"),
    ],
)
def test_bad_keys_file_entries_fail_the_start(
    tmp_path: Path, entry: dict[str, object], complaint: str
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [entry]}))
    with pytest.raises(ConfigError, match=complaint) as raised:
        keys_from_file(path)
    assert USER_KEY not in str(raised.value)


def test_environment_keys_are_hashed_at_once_and_never_quoted_in_errors() -> None:
    keys = keys_from_env(f" acme:{USER_KEY} , ops:{ADMIN_KEY}:admin,")
    assert keys == (ApiKey("acme", hash_key(USER_KEY)), ApiKey("ops", hash_key(ADMIN_KEY), True))
    assert all(USER_KEY not in repr(k) for k in keys)
    for bad in ("acme:short", f"acme:{USER_KEY}:root", f"{USER_KEY}", f"bad tenant:{USER_KEY}"):
        with pytest.raises(ConfigError) as raised:
            keys_from_env(bad)
        assert USER_KEY not in str(raised.value) and "short" not in str(raised.value)


def test_settings_merge_the_file_and_the_environment_and_refuse_a_key_twice(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"tenant": "t", "key_sha256": hash_key(WRONG_KEY)}]}))
    settings = load_settings(env={**ENV, "DUALPATH_API_KEYS_FILE": str(path)})
    assert [k.tenant for k in settings.api_keys] == ["t", "acme", "ops"]
    assert [k.tenant for k in load_settings(api_keys_file=path, env={}).api_keys] == ["t"]
    assert load_settings(env={}).api_keys == ()
    with pytest.raises(ConfigError, match="configured twice"):
        load_settings(env={"DUALPATH_API_KEYS": f"a:{USER_KEY},b:{USER_KEY}"})
    with pytest.raises(ConfigError, match="non-negative"):
        load_settings(env={"DUALPATH_RATE_LIMITS_TOKENS_PER_MIN": "-5"})


def test_dualpath_keys_hash_and_new(tmp_path: Path) -> None:
    runner = CliRunner()
    hashed = runner.invoke(cli, ["keys", "hash"], input=USER_KEY + "\n")
    assert hashed.exit_code == 0, hashed.output
    assert hashed.output.strip() == hash_key(USER_KEY)
    assert runner.invoke(cli, ["keys", "hash", "short"]).exit_code == 2
    made = runner.invoke(cli, ["keys", "new", "acme", "--admin", "--requests-per-min", "60"])
    assert made.exit_code == 0, made.output
    key = made.output.splitlines()[0].rsplit(" ", 1)[1]
    path = tmp_path / "keys.yaml"
    entry_lines = [line for line in made.output.splitlines() if not line.startswith("#")]
    path.write_text("keys:\n" + "\n".join("  " + line for line in entry_lines) + "\n")
    (entry,) = keys_from_file(path)
    assert entry == ApiKey("acme", hash_key(key), admin=True, requests_per_min=60)
    assert key not in path.read_text()


# --- the app --------------------------------------------------------------------------------


@pytest.fixture
def keyed() -> Iterator[TestClient]:
    with TestClient(create_app(load_settings(env=ENV))) as client:
        yield client


@pytest.fixture
def open_app() -> Iterator[TestClient]:
    with TestClient(create_app(load_settings(env={}))) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/sessions"),
        ("GET", "/v1/sessions/some-id"),
        ("DELETE", "/v1/sessions/some-id"),
        ("GET", "/debug/decisions"),
        ("GET", "/workers"),
        ("GET", "/no/such/route"),  # default deny: unknown paths do not reveal themselves
    ],
)
def test_a_missing_or_wrong_key_gets_401(keyed: TestClient, method: str, path: str) -> None:
    missing = keyed.request(method, path)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_openai_error(missing.json(), "invalid_api_key")
    assert missing.json()["error"]["type"] == "invalid_request_error"
    for auth in (f"Bearer {WRONG_KEY}", f"Basic {USER_KEY}", "Bearer ", "Bearer " + "k" * 5000):
        wrong = keyed.request(method, path, headers={"authorization": auth})
        assert wrong.status_code == 401, auth
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        assert_openai_error(wrong.json(), "invalid_api_key")
        assert WRONG_KEY not in wrong.text and USER_KEY not in wrong.text


def test_a_valid_key_passes(keyed: TestClient) -> None:
    assert keyed.get("/v1/models", headers=bearer(USER_KEY)).json() == {
        "object": "list",
        "data": [],
    }
    chat = keyed.post(
        "/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
        headers=bearer(USER_KEY),
    )
    assert chat.status_code == 404  # past the key check: the model is what is missing
    assert_openai_error(chat.json(), "model_not_found")


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics", "/dashboard", "/dashboard/data"])
def test_probes_metrics_and_the_dashboard_stay_open(keyed: TestClient, path: str) -> None:
    # /ready is 503 here (no workers), but answered, not refused.
    assert keyed.get(path).status_code in (200, 503)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/debug/decisions"),
        ("GET", "/v1/sessions"),
        ("DELETE", "/v1/sessions/x"),
        ("GET", "/workers"),
        ("GET", "/workers/x"),
    ],
)
def test_admin_routes_need_an_admin_key(keyed: TestClient, method: str, path: str) -> None:
    denied = keyed.request(method, path, headers=bearer(USER_KEY))
    assert denied.status_code == 403
    assert_openai_error(denied.json(), "permission_denied")
    allowed = keyed.request(method, path, headers=bearer(ADMIN_KEY))
    assert allowed.status_code in (200, 404)  # 404: no session or worker x (for this tenant)
    if allowed.status_code == 404:
        assert_openai_error(allowed.json(), "not_found")


def test_without_keys_the_gateway_stays_open(open_app: TestClient) -> None:
    assert open_app.get("/v1/models").status_code == 200
    assert open_app.get("/v1/models", headers=bearer(WRONG_KEY)).status_code == 200
    assert open_app.get("/debug/decisions").status_code == 200
    assert open_app.get("/v1/sessions").status_code == 200


def test_tenant_of_reads_the_edge_decision_or_the_open_rule() -> None:
    assert tenant_of({}) == ANONYMOUS
    assert tenant_of({"authorization": f"Bearer {USER_KEY}"}) == open_tenant(f"Bearer {USER_KEY}")
    assert tenant_of({TENANT_HEADER: "acme", "authorization": "Bearer x"}) == "acme"


@pytest.mark.parametrize(
    ("env", "key", "expected"),
    [
        (ENV, USER_KEY, "acme"),
        (ENV, ADMIN_KEY, "ops"),
        ({}, USER_KEY, open_tenant(f"Bearer {USER_KEY}")),
        ({}, None, ANONYMOUS),
    ],
)
def test_routes_see_the_keys_tenant_never_the_clients_header_nor_the_key(
    env: dict[str, str], key: str | None, expected: str
) -> None:
    app = create_app(load_settings(env=env))

    @app.get("/v1/echo-tenant")
    async def echo(request: Request) -> dict[str, object]:
        return {
            "tenant": tenant_of(request.headers),
            "authorization": request.headers.get("authorization"),
        }

    headers = {TENANT_HEADER: "victim"} | (bearer(key) if key else {})
    with TestClient(app) as client:
        body = client.get("/v1/echo-tenant", headers=headers).json()
    assert body == {"tenant": expected, "authorization": None}


def test_registering_a_worker_needs_an_admin_key_before_its_body_is_read(
    keyed: TestClient,
) -> None:
    body = {"url": "http://127.0.0.1:9", "role": "decode"}
    assert keyed.post("/workers", json=body).status_code == 401
    denied = keyed.post("/workers", content=b"not json", headers=bearer(USER_KEY))
    assert denied.status_code == 403
    assert_openai_error(denied.json(), "permission_denied")
    assert keyed.post("/workers", content=b"not json", headers=bearer(ADMIN_KEY)).status_code == 400
