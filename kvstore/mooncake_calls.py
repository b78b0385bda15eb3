"""What one Mooncake client call does, on the store's worker thread: the wheel's API quirks, in one
place and without asyncio (`mooncake_store` decides what the answers mean for the store's health).

Quirks handled here (`reference/mooncake-notes.md` §4, and "seen here" while writing this):

- `put_batch` answers one code for the whole batch, and a failed batch may have stored part of it
  (-200 NO_AVAILABLE_HANDLE: seen here, the small objects of a batch stored and the one larger
  than the pool not): what is stored is then asked with `batch_is_exist`. A value larger than the
  staging buffer fails its whole batch with -600 and nothing is stored: the store never sends one.
- `get_batch` answers `b''` for a miss and for a failure alike, and also for every key past what
  fits in the staging buffer (seen here: 256 × 64 KiB with a 4 MiB buffer returned 64 values and
  192 `b''`). Empty answers are therefore classified with `batch_is_exist`, and keys that exist
  are read again as long as the pass before read something (a full buffer; a pass that read
  nothing is a failure, e.g. a dead peer, and each try of it can cost ~1 s).
- `get_batch([])` answers `[b'']` (seen here): callers never pass an empty batch.
- `remove` of a key another client just read fails with -706 OBJECT_HAS_LEASE for 10 s: forced.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

MIB = 1 << 20

NO_AVAILABLE_HANDLE = -200
NOT_FOUND = -704
TRANSFER_FAIL = -800
RPC_FAIL = -900

FOUND = 1
"""`batch_is_exist`: 1 present, 0 missing, < 0 an error code."""
READ, MISSING, UNREADABLE = 1, 0, 2
"""`get_all` states besides error codes (< 0): read, missing, present but not readable."""


@dataclass(frozen=True, slots=True)
class MooncakeConfig:
    master: str = "127.0.0.1:50051"
    """The master's RPC address, host:port."""
    metrics: str | None = None
    """The master's metrics address, host:port (`MooncakeMaster.metrics_address`); when set,
    `stats()` reports the pool's capacity, bytes used, keys and evictions from it."""
    segment_bytes: int = 256 * MIB
    """This process's contribution to the pool (`global_segment_size`); 0 = a pure client."""
    buffer_bytes: int = 64 * MIB
    """The client's staging buffer (`local_buffer_size`): each batch, put or get, goes through it,
    so batches are cut to half of it."""
    timeout_s: float = 2.0
    """Bound on one store call (all its chunks), and on `setup`."""
    close_timeout_s: float = 5.0
    """Bound on `close()`; the client's close often takes ~2 s (§7)."""
    namespace: str = "dp"
    """Keys are `<namespace>/<hex key>`; `clear()` removes this namespace only."""
    local_hostname: str = "127.0.0.1"
    """The address this client's transfer engine advertises (P2PHANDSHAKE: no metadata server)."""
    batch_objects: int = 256
    """Objects per client call; the notes saw the TCP transport jam at 4,096 per peer (§5)."""
    max_in_flight: int = 64
    """Calls queued or running on the worker beyond which a call fails fast (a miss + error)."""
    backoff_s: float = 1.0
    """While the master is down, how long calls answer at once before the next probe."""
    transfer_failures_before_reset: int = 3
    """Consecutive TRANSFER_FAIL answers after which the client is rebuilt."""

    def __post_init__(self) -> None:
        if self.segment_bytes < 0 or self.buffer_bytes <= 0 or self.batch_objects <= 0:
            raise ValueError("segment_bytes >= 0, buffer_bytes > 0 and batch_objects > 0")
        if self.timeout_s <= 0 or self.max_in_flight <= 0:
            raise ValueError("timeout_s and max_in_flight must be positive")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.namespace):
            raise ValueError("a namespace is letters, digits, '_' and '-' (it becomes a regex)")


def chunks(sizes: Sequence[int], max_objects: int, max_bytes: int) -> Iterator[range]:
    """Consecutive index ranges of ≤ `max_objects` entries and ≤ `max_bytes` bytes (an entry
    larger than that gets a range of its own)."""
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= max_objects or total + size > max_bytes):
            yield range(start, i)
            start, total = i, 0
        total += size
    if start < len(sizes):
        yield range(start, len(sizes))


def setup(client: Any, config: MooncakeConfig) -> int:
    return int(
        client.setup(
            config.local_hostname,
            "P2PHANDSHAKE",
            config.segment_bytes,
            config.buffer_bytes,
            "tcp",
            "",
            config.master,
        )
    )


def _codes(answer: Any, expected: int) -> list[int]:
    codes: list[int] = list(answer)
    if len(codes) != expected:
        raise ValueError(f"{len(codes)} answers for {expected} keys")
    return codes


def exist_codes(client: Any, names: list[str]) -> list[int]:
    return _codes(client.batch_is_exist(names), len(names))


def _put_chunk(client: Any, names: list[str], values: list[bytes]) -> tuple[int, int]:
    """(the batch's code, how many of its keys are stored now)."""
    rc = int(client.put_batch(names, values))
    if rc == 0:
        return 0, len(names)
    if rc == RPC_FAIL:
        return rc, 0
    return rc, exist_codes(client, names).count(FOUND)


def _get_chunk(client: Any, names: list[str]) -> tuple[list[bytes], list[int]]:
    """Each key's value (`b''` when none) and state: READ, MISSING, UNREADABLE or an error code."""
    values = list(client.get_batch(names))
    if len(values) != len(names):
        raise ValueError(f"{len(values)} values for {len(names)} keys")
    states = [READ if value else MISSING for value in values]
    todo = [i for i, value in enumerate(values) if not value]
    progress = len(todo) < len(names)
    while todo:
        codes = exist_codes(client, [names[i] for i in todo])
        for i, code in zip(todo, codes, strict=True):
            states[i] = UNREADABLE if code == FOUND else code
        todo = [i for i, code in zip(todo, codes, strict=True) if code == FOUND]
        if not todo or not progress:
            break  # a pass that read nothing is not a full buffer: do not wait on it again
        again = list(client.get_batch([names[i] for i in todo]))
        progress = False
        for i, value in zip(todo, again, strict=True):
            if value:
                values[i], states[i], progress = value, READ, True
        todo = [i for i in todo if not values[i]]
    return values, states


@dataclass(frozen=True, slots=True)
class Cut:
    """How one store call is cut into client calls, and when it gives up (`time.monotonic()`).

    A whole store call runs as ONE job on the worker: one thread hand-off per call instead of one
    per chunk (seen here: per-chunk hand-offs on a 2-core machine slowed the C++ transfers
    themselves by ~20%). The job checks the deadline between chunks; the caller's own timeout
    is the bound that matters."""

    max_objects: int
    max_bytes: int
    deadline: float

    def over(self) -> bool:
        return time.monotonic() > self.deadline


def put_all(client: Any, names: list[str], values: list[bytes], cut: Cut) -> tuple[int, int]:
    """(how many are stored, the worst batch code or 0). A batch that failed for want of space
    (-200: Mooncake may have stored part of it) does not stop the others; -900 and -800 do: the
    next batch would fail as well, and may cost a second or more."""
    stored, worst = 0, 0
    for part in chunks([len(v) for v in values], cut.max_objects, cut.max_bytes):
        if cut.over():
            break
        rc, count = _put_chunk(
            client, names[part.start : part.stop], values[part.start : part.stop]
        )
        stored += count
        worst = min(worst, rc)
        if rc in (RPC_FAIL, TRANSFER_FAIL):
            break
    return stored, worst


def get_all(
    client: Any, names: list[str], value_bytes: int, cut: Cut
) -> tuple[list[bytes], list[int]]:
    """Values and states (see `_get_chunk`) of every key, sized to the buffer by the largest
    value seen; stops after a chunk with a failure (MISSING stands for what was not asked)."""
    values: list[bytes] = [b""] * len(names)
    states = [MISSING] * len(names)
    for part in chunks([max(1, value_bytes)] * len(names), cut.max_objects, cut.max_bytes):
        if cut.over():
            break
        got, got_states = _get_chunk(client, names[part.start : part.stop])
        values[part.start : part.stop] = got
        states[part.start : part.stop] = got_states
        if min(got_states) < 0 or UNREADABLE in got_states:
            break
    return values, states


def exist_all(client: Any, names: list[str], cut: Cut, *, stop_at_gap: bool) -> list[int]:
    """`batch_is_exist` codes (0 where not asked); stops at an error, or a gap if asked to."""
    codes = [0] * len(names)
    for start in range(0, len(names), cut.max_objects):
        if cut.over():
            break
        answer = exist_codes(client, names[start : start + cut.max_objects])
        codes[start : start + len(answer)] = answer
        if min(answer) < 0 or (stop_at_gap and answer.count(FOUND) != len(answer)):
            break
    return codes


def remove_all(client: Any, names: list[str], cut: Cut) -> list[int]:
    """Forced removes' codes (0 removed, -704 missing or not asked)."""
    codes = [NOT_FOUND] * len(names)
    for start in range(0, len(names), cut.max_objects):
        if cut.over():
            break
        chunk = names[start : start + cut.max_objects]
        answer = _codes(client.batch_remove(chunk, True), len(chunk))
        codes[start : start + len(answer)] = answer
        if min(answer) == RPC_FAIL:
            break
    return codes


def remove_namespace(client: Any, namespace: str, cut: Cut) -> int:
    """How many keys of the namespace were removed, or an error code (one call: `cut` unused)."""
    return int(client.remove_by_regex(f"^{namespace}/", True))
