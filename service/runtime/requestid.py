"""The request id: its header, its context variable, what a sane one looks like, new ones.

Every HTTP response carries ``X-Request-ID``: the client's, when it is sane
(letters, digits and ``._:-``, at most 128 characters: safe in logs, headers
and URLs), else a new one. The id is bound in :data:`request_id_var` for the
request's task, so every log line of the request carries it, executor jobs
take it along, and downstream calls forward it.
"""

from __future__ import annotations

import re
from contextvars import ContextVar

from service.runtime.ids import IdSequence

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_MAX = 128

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Letters, digits and a few separators: safe in logs, headers and URLs.
sane = re.compile(r"[A-Za-z0-9._:\-]{1,128}").fullmatch


def sane_request_id(value: str | None) -> bool:
    return value is not None and sane(value) is not None


def request_ids() -> IdSequence:
    """A sequence of new request ids for this process."""
    return IdSequence()
