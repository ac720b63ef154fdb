"""When to retry a failed request, how long to wait, and how tritonclient errors become ClipErrors.

Inference is idempotent (the same image always gives the same vector and the server keeps no state
between requests), so resending a request that failed in transit can neither duplicate nor lose a
row. Only transient conditions are retried: UNAVAILABLE (server down, restarting, draining, stopping,
unreachable, connection reset), CANCELLED (by a server on its way out), Triton's queue-full rejection ("Exceeds maximum queue size"), and the
NOT_FOUND a stopping Triton gives while it unloads a model it has ("has no available versions"): that
one means "this server is going away", unlike the NOT_FOUND for a model the server never had ("is not
found"), which stays final. INVALID_ARGUMENT and every other status are final.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from .errors import RequestFailedError, ServerTimeoutError, ServerUnavailableError, TransportError

QUEUE_FULL_MESSAGE = "Exceeds maximum queue size"
# Triton 2.51 while it stops or unloads a model it has (versus "... is not found" for a name it never had).
GOING_AWAY_MESSAGES = ("has no available versions", "is not at ready state")
# Triton answers a request missing a restricted protocol's header with UNAVAILABLE; waiting cannot fix it.
RESTRICTED_MESSAGE = "This protocol is restricted"
# What "busy or going away" looks like: the default policy retries exactly these, and final_error reports
# them as ServerUnavailableError. CANCELLED: what a server that exits cancels its open calls with (our
# clients never cancel a call whose outcome they still read).
TRANSIENT_STATUSES = frozenset({"UNAVAILABLE", "CANCELLED"})
TRANSIENT_MESSAGES = (QUEUE_FULL_MESSAGE, *GOING_AWAY_MESSAGES)


def status_name(status: str | None) -> str:
    """'StatusCode.UNAVAILABLE' (tritonclient's spelling) -> 'UNAVAILABLE'."""
    return (status or "UNKNOWN").rsplit(".", 1)[-1]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by a total deadline per request.

    The n-th wait is drawn uniformly from [cap/2, cap] where cap = min(max_backoff_s,
    initial_backoff_s * multiplier**n): jitter spreads clients that failed together (a server restart
    fails everyone at once) so they do not return in lockstep.
    """

    deadline_s: float = 60.0
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    retry_statuses: frozenset[str] = TRANSIENT_STATUSES
    retry_messages: tuple[str, ...] = TRANSIENT_MESSAGES
    never_retry_messages: tuple[str, ...] = (RESTRICTED_MESSAGE,)

    def __post_init__(self) -> None:
        if self.deadline_s < 0 or self.initial_backoff_s <= 0 or self.max_backoff_s <= 0 or self.multiplier < 1:
            raise ValueError(f"invalid retry policy {self}")

    def is_retryable(self, status: str | None, message: str) -> bool:
        if any(m in message for m in self.never_retry_messages):
            return False
        return status_name(status) in self.retry_statuses or any(m in message for m in self.retry_messages)

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `attempt`-th consecutive failure (0-based)."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** min(attempt, 64))
        return (rng or random).uniform(cap / 2, cap)


NO_RETRY = RetryPolicy(deadline_s=0.0)


def with_deadline(policy: RetryPolicy, deadline_s: float | None) -> RetryPolicy:
    """`policy` with its total deadline replaced (None keeps it)."""
    return policy if deadline_s is None else dataclasses.replace(policy, deadline_s=float(deadline_s))


def final_error(status: str | None, message: str, url: str, *, attempts: int = 1, waited_s: float = 0.0,
                context: str = "request") -> TransportError:
    """The ClipError to raise for a failure that will not (or no longer) be retried."""
    name = status_name(status)
    where = f"{context} to {url}"
    if name == "DEADLINE_EXCEEDED":
        return ServerTimeoutError(f"{where} timed out: {message}", name, url)
    if RESTRICTED_MESSAGE in message:
        return RequestFailedError(f"{where} refused: {message} (pass it with headers={{...}}; over gRPC Triton "
                                  "expects the configured header name prefixed by 'triton-grpc-protocol-')", name, url)
    if name in TRANSIENT_STATUSES or any(m in message for m in TRANSIENT_MESSAGES):
        tries = f" after {attempts} attempt(s) over {waited_s:.1f} s" if attempts > 1 else ""
        return ServerUnavailableError(f"{where} failed{tries}: {name}: {message}{_hint(message)}", name, url)
    return RequestFailedError(f"{where} failed: {name}: {message}{_hint(message)}", name, url)


def _hint(message: str) -> str:
    """A sentence for the common misconfigurations whose gRPC messages are cryptic."""
    lowered = message.lower()
    if "ssl" in lowered or "handshake" in lowered or "tls" in lowered:
        return (" (TLS mismatch? for a TLS server pass its root certificate: root_certificates=... or --tls-ca;"
                " for a plain server, connect without TLS)")
    if "http1.x" in lowered or "http/1" in lowered:
        return " (this looks like an HTTP port; the gRPC port is usually 8001)"
    if "socket closed" in lowered:
        return " (the connection was dropped; if the server uses TLS, connect with ssl=True)"
    return ""
