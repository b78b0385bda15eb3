"""Session errors.

SessionError
├── InvalidSessionId     a client-supplied session id that cannot be used (→ 400)
└── SessionStoreError    the store could not answer (Redis down, timeout); callers degrade
"""

from __future__ import annotations


class SessionError(Exception):
    """Base of the session package's errors."""


class InvalidSessionId(SessionError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class SessionStoreError(SessionError):
    """The session store failed; the request can still be served without it."""
