"""What the gateway reports about each request: the access log line and the metrics.

The proxy app fills one :class:`RequestRecord` per request and hands it to its
:class:`Observer`; nothing in a record is a token, a secret, a key or a query string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway import logs
from gateway.logs import MAX_LOGGED_SUBJECT, AccessRecord

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics
    from gateway.policy import PolicyEvents

__all__ = ["MAX_LOGGED_SUBJECT", "Observer", "RequestRecord"]


@dataclass(slots=True)
class RequestRecord(AccessRecord):
    """One finished request, as logged and counted.

    Access writers format its attributes straight into a line (:func:`gateway.logs.format_record`);
    :meth:`log_fields` is for everything else.
    """

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

    def log_fields(self) -> dict[str, Any]:
        """The access-log fields, in log order (a literal: ``dataclasses.asdict`` costs ~10x)."""
        sub = self.sub
        if type(sub) is str and len(sub) > MAX_LOGGED_SUBJECT:
            sub = sub[:MAX_LOGGED_SUBJECT] + "..."
        return {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "status": self.status,
            "decision": self.decision,
            "reason": self.reason,
            "rule": self.rule,
            "provider": self.provider,
            "sub": sub,
            "client": self.client,
            "upstream_status": self.upstream_status,
            "duration_ms": self.duration_ms,
            "verify_ms": self.verify_ms,
            "upstream_ms": self.upstream_ms,
        }


class Observer:
    """Receives request and reload events: writes the access log line and, when it has
    ``metrics``, moves them.

    ``request_started`` and ``request_ended`` bracket every HTTP request (``ended`` is called
    however the request ends, cancellation included); ``request_done`` receives the record of a
    request that produced an answer or an abort.
    """

    def __init__(self, metrics: GatewayMetrics | None = None) -> None:
        self.metrics = metrics

    @property
    def policy_events(self) -> PolicyEvents | None:
        """Hooks for key sources and the token cache (pass to ``build_policy(events=...)``)."""
        return self.metrics

    def request_started(self) -> None:
        """A request entered the gateway (in-flight gauge)."""
        metrics = self.metrics
        if metrics is not None:
            metrics.request_started()

    def request_ended(self) -> None:
        """A request left the gateway, however it ended (in-flight gauge)."""
        metrics = self.metrics
        if metrics is not None:
            metrics.request_ended()

    def request_done(self, record: RequestRecord) -> None:
        """A request finished (answered, forwarded or aborted): log it and count it."""
        logs.access(record)
        metrics = self.metrics
        if metrics is not None:
            metrics.request_done(
                record.route,
                record.method,
                record.status,
                record.decision,
                record.reason,
                record.duration_ms / 1000.0,
                record.verify_ms / 1000.0,
                record.upstream_ms / 1000.0 if record.upstream_status is not None else None,
            )

    def reload_done(self, outcome: str) -> None:
        """A config reload finished: ``ok`` or ``error``."""
        metrics = self.metrics
        if metrics is not None:
            metrics.reload_done(outcome)
