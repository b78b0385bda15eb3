"""Which agents a replay runs and when each starts; and the options refused before a run."""

from __future__ import annotations

import pytest

from loadtest.replay.config import Mode, ReplayConfig
from loadtest.replay.errors import ReplayError
from loadtest.replay.runner import plan_agents
from loadtest.trace import AgentId, AgentTrace, Trace, Turn

URL = "http://127.0.0.1:9"


def _trace(agents: int = 3, turns: int = 4, arrivals: bool = False) -> Trace:
    return Trace(
        tuple(
            AgentTrace(
                AgentId(f"a{i}"),
                tuple(Turn(100, 10) for _ in range(turns)),
                10.0 + 2 * i if arrivals else None,
            )
            for i in range(agents)
        )
    )


def test_offline_runs_every_agent_at_zero() -> None:
    plans = plan_agents(_trace(), ReplayConfig(URL))
    assert [(p.agent_id, p.start_s, len(p.trace.turns)) for p in plans] == [
        ("a0", 0.0, 4),
        ("a1", 0.0, 4),
        ("a2", 0.0, 4),
    ]


def test_more_agents_than_the_trace_reuse_it_under_new_ids_and_turns_are_cut() -> None:
    plans = plan_agents(_trace(), ReplayConfig(URL, agents=7, max_turns=2))
    assert [p.agent_id for p in plans] == ["a0", "a1", "a2", "a0~1", "a1~1", "a2~1", "a0~2"]
    assert all(len(p.trace.turns) == 2 for p in plans)


def test_online_poisson_arrivals_are_seeded() -> None:
    config = ReplayConfig(URL, mode=Mode.ONLINE, aps=4.0, agents=400, seed=5)
    starts = [p.start_s for p in plan_agents(_trace(), config)]
    assert starts == [p.start_s for p in plan_agents(_trace(), config)]
    assert starts[0] == 0.0 and starts == sorted(starts)
    assert 80 < starts[-1] < 120  # 399 gaps of mean 0.25 s
    other = ReplayConfig(URL, mode=Mode.ONLINE, aps=4.0, agents=400, seed=6)
    assert starts != [p.start_s for p in plan_agents(_trace(), other)]


def test_online_without_aps_uses_the_traces_arrivals() -> None:
    plans = plan_agents(_trace(arrivals=True), ReplayConfig(URL, mode=Mode.ONLINE))
    assert [p.start_s for p in plans] == [0.0, 2.0, 4.0]
    with pytest.raises(ReplayError, match="needs --aps"):
        plan_agents(_trace(), ReplayConfig(URL, mode=Mode.ONLINE))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://x"}, "http:// or https://"),
        ({"aps": 1.0}, "--aps is for --mode online"),
        ({"mode": Mode.ONLINE, "aps": 0.0}, "positive"),
        ({"agents": 0}, "--agents"),
        ({"max_turns": 0}, "--max-turns"),
        ({"max_concurrency": 0}, "--max-concurrency"),
        ({"tool_latency_scale": float("nan")}, "--tool-latency"),
        ({"retry_shed": 101}, "--retry-shed"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"url": URL, **kwargs}
    with pytest.raises(ReplayError, match=message):
        ReplayConfig(**args)  # type: ignore[arg-type]


def test_base_url_accepts_a_trailing_v1() -> None:
    assert ReplayConfig("http://h:1/v1/").base_url == "http://h:1"
