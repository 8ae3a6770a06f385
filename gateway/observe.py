"""What the gateway reports about each request: the access log line (and, with the operations
work, metrics). The proxy app fills one :class:`RequestRecord` per request and hands it to its
:class:`Observer`; nothing in a record is a token, a secret, a key or a query string."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gateway import logs


@dataclass(slots=True)
class RequestRecord:
    """One finished request, as logged and counted."""

    request_id: str
    method: str
    #: The canonical path (None when the path itself was refused).
    path: str | None
    route: str | None
    status: int
    #: ``allowed``, ``denied``, ``report_only`` or ``error``.
    decision: str
    #: Stable reason code: ``ok`` or the denial's reason.
    reason: str
    provider: str | None
    #: The configured subject claim's value (``logging.subject_claim``), when loggable.
    sub: str | int | None
    client: str | None
    upstream_status: int | None
    duration_ms: float
    verify_ms: float
    upstream_ms: float
    #: The failing rule condition (names the condition, never claim values).
    rule: str | None = None


class Observer:
    """Receives request events. The default writes the access log line."""

    def request_started(self) -> None:
        """A request entered the gateway (for in-flight gauges)."""

    def request_done(self, record: RequestRecord) -> None:
        """A request finished (answered, forwarded or aborted)."""
        logs.access(asdict(record))

    def reload_done(self, outcome: str) -> None:
        """A config reload finished: ``ok`` or ``error``."""
