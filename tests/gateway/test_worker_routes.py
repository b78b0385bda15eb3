"""`POST/GET/DELETE /workers` against real processes: register a worker at run time, drain one
with a stream in flight (it finishes, then the worker is gone), and the errors of each route."""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.support.pd_cluster import sim_cluster, sim_worker
from tests.support.procs import free_port, running

pytestmark = pytest.mark.slow

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["message"] and error["type"]
    return error


def _stream_in_background(url: str, out: list[str], started: threading.Event) -> threading.Thread:
    body = {**CHAT, "max_tokens": 400, "ignore_eos": True, "stream": True}

    def read() -> None:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line:
                    out.append(line)
                    started.set()

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def test_register_list_and_drain_round_trip() -> None:
    port, boot = free_port(), free_port()
    extra = sim_worker("decode", port, boot, 1.0)
    extra_url = f"http://127.0.0.1:{port}"
    with (
        running(extra, extra_url + "/health"),
        sim_cluster(1, 1, env={"DUALPATH_HEALTH_INTERVAL_S": "0.2"}) as c,
        httpx.Client(base_url=c.base, timeout=30) as gw,
    ):
        first_decode = c.decode[0].url
        listed = gw.get("/workers").json()
        assert listed["object"] == "list"
        assert {(w["url"], w["role"]) for w in listed["data"]} == {
            (c.prefill[0].url, "prefill"),
            (first_decode, "decode"),
        }
        one = listed["data"][0]
        assert one["model"] == "tiny" and one["healthy"] and one["in_flight"] == 0
        assert one["breaker"]["state"] == "closed" and not one["draining"]

        # Register the extra decode worker: discovered and healthy at once.
        added = gw.post("/workers", json={"url": extra_url + "/", "role": "decode"})
        assert added.status_code == 201, added.text
        new = added.json()
        assert new["url"] == extra_url and new["model"] == "tiny" and new["healthy"]
        assert (
            _error(gw.post("/workers", json={"url": extra_url, "role": "decode"}), 409)["code"]
            == "worker_exists"
        )
        for bad in (
            {"url": "ftp://x", "role": "decode"},
            {"url": extra_url, "role": "router"},
            {"role": "decode"},
            {"url": "http://h:1", "role": "decode", "surprise": 1},
            {"url": "http://user:secret@h:1", "role": "decode"},
            {"url": "http://h:port", "role": "decode"},
        ):
            _error(gw.post("/workers", json=bad), 400)
        assert _error(gw.delete("/workers/nope"), 404)["code"] == "not_found"

        # Drain the configured decode (idle: removed at once); the new one serves alone.
        (decode_id,) = [w["id"] for w in listed["data"] if w["url"] == first_decode]
        gone = gw.delete(f"/workers/{decode_id}")
        assert gone.status_code == 200 and gone.json()["removed"], gone.text
        assert first_decode not in {w["url"] for w in gw.get("/workers").json()["data"]}
        assert gw.post("/v1/chat/completions", json=CHAT).status_code == 200

        # Drain it with a stream in flight: 202, no new request goes there, the stream ends.
        events: list[str] = []
        started = threading.Event()
        reader = _stream_in_background(c.base, events, started)
        assert started.wait(30)
        draining = gw.delete(f"/workers/{quote(extra_url, safe='')}")
        assert draining.status_code == 202, draining.text
        assert draining.json()["draining"] and draining.json()["in_flight"] == 1
        refused = gw.post("/v1/chat/completions", json=CHAT)
        assert _error(refused, 503)["code"] == "no_healthy_worker"
        reader.join(60)
        assert events[-1] == "data: [DONE]" and not any('"error"' in e for e in events)
        deadline = time.monotonic() + 5
        while gw.get(f"/workers/{new['id']}").status_code != 404:
            assert time.monotonic() < deadline, "the drained worker was never removed"
            time.sleep(0.05)  # a poll interval

        # Registered again (by URL), the first decode serves again.
        again = gw.post("/workers", json={"url": first_decode, "role": "decode"})
        assert again.status_code == 201 and again.json()["healthy"], again.text
        assert gw.post("/v1/chat/completions", json=CHAT).status_code == 200


ADMIN_KEY, USER_KEY = "admin-key-0123456789", "user-key-0123456789"
KEYS = {"DUALPATH_API_KEYS": f"ops:{ADMIN_KEY}:admin,app:{USER_KEY}"}


def test_an_unreachable_worker_is_registered_unhealthy_and_used_once_up() -> None:
    port, boot = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with (
        sim_cluster(1, 1, env={"DUALPATH_HEALTH_INTERVAL_S": "0.2", **KEYS}) as c,
        httpx.Client(base_url=c.base, timeout=30, headers=admin) as gw,
    ):
        # Admin routes: no key 401, a tenant's key 403.
        assert httpx.get(c.base + "/workers").status_code == 401
        user = {"Authorization": f"Bearer {USER_KEY}"}
        assert _error(httpx.get(c.base + "/workers", headers=user), 403)
        spec = {"url": url, "role": "prefill", "bootstrap_port": boot}
        assert httpx.post(c.base + "/workers", json=spec, headers=user).status_code == 403
        assert httpx.delete(c.base + f"/workers/{c.decode[0].url}", headers=user).status_code == 403
        added = gw.post("/workers", json=spec)
        assert added.status_code == 201 and not added.json()["healthy"], added.text
        assert added.json()["model"] is None
        with running(sim_worker("prefill", port, boot, 1.0), url + "/health"):
            deadline = time.monotonic() + 10
            while not gw.get(f"/workers/{added.json()['id']}").json()["healthy"]:
                assert time.monotonic() < deadline, "the health checks never found it"
                time.sleep(0.05)  # a poll interval
            assert gw.post("/v1/chat/completions", json=CHAT).status_code == 200
