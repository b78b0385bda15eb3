"""Session identity from what the client sent, in order of precedence.

`X-Session-ID`; the agent-native headers (Claude Code, Codex, OpenCode); `metadata.session_id`
in the body; the `user` field. Without any of these the tracker infers the session from the
prompt itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from session.errors import InvalidSessionId

MAX_SESSION_ID_CHARS = 128

SESSION_HEADER = "X-Session-ID"
"""Ours, and OpenCode's; the gateway also sends it back on every chat response."""
AGENT_HEADERS = ("x-claude-code-session-id", "session-id")
"""Claude Code's and Codex's own session headers (OpenCode sends `x-session-id` itself)."""


@dataclass(frozen=True, slots=True)
class ClaimedSession:
    id: str
    source: str
    """Where the id came from: `header`, `agent-header`, `metadata` or `user`."""


def check_session_id(value: Any, param: str) -> str:
    """A usable session id: a printable string of 1 to 128 characters."""
    if not isinstance(value, str):
        raise InvalidSessionId(f"'{param}' must be a string", param)
    if not value or len(value) > MAX_SESSION_ID_CHARS:
        raise InvalidSessionId(
            f"'{param}' must be 1 to {MAX_SESSION_ID_CHARS} characters, not {len(value)}", param
        )
    if not value.isprintable() or value != value.strip():
        raise InvalidSessionId(
            f"'{param}' must be printable, without control characters or edge whitespace", param
        )
    return value


def claimed_session(headers: Mapping[str, str], body: Mapping[str, Any]) -> ClaimedSession | None:
    """The session the client names, or None when it names none.

    `headers` must be case-insensitive (as Starlette's are) or have lower-case keys.
    """
    value = headers.get(SESSION_HEADER.lower())
    if value is not None:
        return ClaimedSession(check_session_id(value, "X-Session-ID"), "header")
    for name in AGENT_HEADERS:
        value = headers.get(name)
        if value is not None:
            return ClaimedSession(check_session_id(value, name), "agent-header")
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and "session_id" in metadata:
        return ClaimedSession(
            check_session_id(metadata["session_id"], "metadata.session_id"), "metadata"
        )
    user = body.get("user")
    if user is not None:
        return ClaimedSession(check_session_id(user, "user"), "user")
    return None
