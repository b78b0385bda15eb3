"""The placement policies, by the name `--policy` takes."""

from __future__ import annotations

from collections.abc import Callable

from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.policies.base import Policy
from gateway.scheduler.policies.basic import Basic, BasicDual
from gateway.scheduler.policies.cache_aware import CacheAware
from gateway.scheduler.policies.dualpath import DualPath
from gateway.scheduler.policies.dualpath_slo import DualPathSLO
from gateway.scheduler.policies.round_robin import RoundRobin

POLICIES: dict[str, Callable[[SchedulerConfig], Policy]] = {
    "round_robin": RoundRobin,
    "cache_aware": CacheAware,
    "basic": Basic,
    "basic-dual": BasicDual,
    "dualpath": DualPath,
    "dualpath-slo": DualPathSLO,
}


def make_policy(config: SchedulerConfig) -> Policy:
    try:
        factory = POLICIES[config.policy]
    except KeyError:
        known = ", ".join(POLICIES)
        raise ValueError(f"unknown policy {config.policy!r}; known: {known}") from None
    return factory(config)
