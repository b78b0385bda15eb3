"""Errors raised by `engines`.

    EngineError
    ├── TokenizerError          a tokenizer could not be loaded
    ├── ChatTemplateError       messages that cannot be rendered to a prompt
    └── UpstreamError           a worker could not be reached or answered badly
        ├── UpstreamTimeout     connect, first byte or between-chunk timeout fired
        └── UpstreamStatusError the worker answered with a non-2xx status

Foreign exceptions (aiohttp) are translated into these at one boundary, `pd_client`.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error raised by `engines`."""


class TokenizerError(EngineError):
    pass


class ChatTemplateError(EngineError):
    pass


class UpstreamError(EngineError):
    def __init__(self, message: str, *, worker: str = "", phase: str = "") -> None:
        super().__init__(message)
        self.worker = worker
        self.phase = phase


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamStatusError(UpstreamError):
    def __init__(self, message: str, *, status: int, body: bytes, worker: str = "") -> None:
        super().__init__(message, worker=worker, phase="status")
        self.status = status
        self.body = body
