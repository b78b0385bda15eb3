"""The live dashboard in headless Chromium (Debian's `chromium`, driven by Playwright) against a
real `dualpath up`: the page loads with no script error, lists the cluster's engines, and its
numbers move while agents send turns, the per-node storage/compute NIC history lines and the
storage-NIC max/avg among them. The last frame is kept as `tests/artifacts/dashboard.png`.

`scripts/test.sh` installs chromium with apt-get; the test is skipped only where neither is
available. It never runs `playwright install` (that downloads a browser).
"""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Page, sync_playwright

from tests.support.procs import REPO, dualpath, free_port, running

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium dials out, and this closed network refuses it.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACT = REPO / "tests" / "artifacts" / "dashboard.png"
AGENTS = 6
WAIT_MS = 15_000
NODE_HISTORY_JS = """
  const rise = key => Math.max(0, ...[...document.querySelectorAll(`#nodes svg.spark .${key}`)]
    .filter(line => line.tagName === 'polyline')
    .map(line => line.ownerSVGElement.viewBox.baseVal.height
      - Math.min(...[...line.points].map(p => p.y))));
  const peak = nic => Math.max(0, ...[...document.querySelectorAll('#nodes svg.spark title')]
    .map(t => t.textContent.match(new RegExp(nic + ' now .*?, peak ([0-9.]+)%')))
    .map(m => Number(m?.[1]) || 0));
"""
"""Over every node's NIC history chart: `rise('s0')` (storage) or `rise('s1')` (compute), how
far its line's highest point is above the floor in viewBox units; `peak('SNIC')` or
`peak('CNIC')`, the peak percentage its tooltip names (the compute NIC is used too lightly to
leave the floor of a 0–100% line). All 0 while every node has been idle."""


def _need_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and apt-get is unavailable to install it")
    pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs it (apt-get install chromium)")


def _agent(client: openai.OpenAI, name: str, stop: threading.Event) -> None:
    """Multi-turn sessions, one after another, until told to stop."""
    session = 0
    while not stop.is_set():
        session += 1
        messages = [{"role": "system", "content": f"agent {name}. " + "Context. " * 150}]
        for turn in range(3):
            if stop.is_set():
                return
            messages.append({"role": "user", "content": f"step {turn}: " + "go on " * 20})
            reply = client.chat.completions.create(
                model="tiny",
                messages=messages,  # type: ignore[arg-type]
                max_tokens=8,
                stream=True,
                extra_headers={"x-session-id": f"{name}-{session}"},
            )
            text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
            messages.append({"role": "assistant", "content": text})


def _number(page: Page, selector: str) -> float:
    text = page.inner_text(selector).replace(",", "").split()[0]
    return float(text) if text not in ("–", "") else 0.0


def test_dashboard_shows_the_cluster_and_moves_under_load() -> None:
    _need_chromium()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = dualpath("up", "--port", str(port), "--prefill", "1", "--decode", "2",
                   "--time-scale", "1", "--snic-gbps", "0.02")  # fmt: skip
    stop = threading.Event()
    errors: list[str] = []
    with (
        running(cmd, base + "/ready", timeout=90),
        sync_playwright() as pw,
        openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=60) as client,
        ThreadPoolExecutor(AGENTS) as pool,
    ):
        urls = {w["url"] for w in httpx.get(base + "/ready", timeout=10).json()["workers"]}
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/dashboard")
            # Every engine of the cluster, once the first poll has drawn the table.
            page.wait_for_function(
                "n => document.querySelectorAll('#engines tbody tr[data-engine]').length >= n",
                arg=len(urls),
                timeout=WAIT_MS,
            )
            shown = page.eval_on_selector_all(
                "#engines tbody tr", "rows => rows.map(r => r.dataset.engine)"
            )
            assert set(shown) == urls
            assert page.inner_text("#policy") == "policy dualpath-slo"
            # Idle so far: each node's NIC history is drawn, flat on the floor.
            assert _wait_for_node_history(page, len(urls)) == [0, 0, 0, 0]
            start = _number(page, "#requests-total")
            futures = [pool.submit(_agent, client, f"a{i}", stop) for i in range(AGENTS)]
            try:
                _wait_for_movement(page, start)
            finally:
                stop.set()
                for f in futures:
                    f.result(timeout=60)
            ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACT), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert ARTIFACT.stat().st_size > 0


def _wait_for_movement(page: Page, start: float) -> None:
    """Poll the DOM (the page redraws about once a second) until every figure has moved."""
    page.wait_for_function(
        "start => {"
        + NODE_HISTORY_JS
        + """
          const text = id => document.getElementById(id).textContent;
          const num = id => Number(text(id).replace(/,/g, '').split(' ')[0]) || 0;
          const cells = (table, i) => [...document.querySelectorAll(`#${table} tbody tr`)]
            .map(r => Number(r.children[i].textContent.replace(/[,%]/g, '')) || 0);
          return num('requests-total') > start + 5
            && text('ttft-now') !== '– / –'
            && document.querySelector('#chart-ttft polyline')?.points.numberOfItems >= 3
            && num('active-sessions') > 0
            && Math.max(...cells('engines', 4), ...cells('engines', 5)) > 0
            && Math.max(...cells('nodes', 2)) > 0
            && /\\((?:[1-9])/.test(text('read-paths-legend'))
            && num('snic-balance') >= 1
            && document.querySelector('#chart-balance polyline')?.points.numberOfItems >= 2
            && rise('s0') > 0 && peak('SNIC') > 0 && peak('CNIC') > 0;
        }""",
        arg=start,
        timeout=WAIT_MS,
        polling=200,
    )


def _wait_for_node_history(page: Page, nodes: int) -> list[float]:
    """Wait until each of the `nodes` rows carries its storage/compute NIC history (a line each,
    a point per sample); answer how far they have risen (`NODE_HISTORY_JS`): both rises, both
    peaks."""
    page.wait_for_function(
        """n => {
          const rows = [...document.querySelectorAll('#nodes tbody tr[data-node]')];
          return rows.length >= n && rows.every(r => ['s0', 's1'].every(key =>
            r.querySelector(`svg.spark polyline.${key}`)?.points.numberOfItems >= 3));
        }""",
        arg=nodes,
        timeout=WAIT_MS,
        polling=200,
    )
    return page.evaluate(
        "() => {"
        + NODE_HISTORY_JS
        + "return [rise('s0'), rise('s1'), peak('SNIC'), peak('CNIC')]; }"
    )
