"""The replay client's exceptions.

    LoadtestError                 (loadtest.errors)
    └── ReplayError               the run cannot start: no model to name, a bad option value
        └── ReplayStreamError     one response is not the stream it should be (internal: the
                                  request that saw it is recorded with the message as `error`)

Transport failures (`httpx.HTTPError`, timeouts) are translated into a request's `error` string
in `chat_request`, the one boundary that talks to the network; a run never ends on one.
"""

from __future__ import annotations

from loadtest.errors import LoadtestError


class ReplayError(LoadtestError):
    pass


class ReplayStreamError(ReplayError):
    pass
