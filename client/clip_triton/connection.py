"""How to reach the server(s): URLs, TLS, headers, compression, keepalive, and which URL to use next.

Both clients build their tritonclient objects from the same `ConnectionOptions`, so the sync and the
asyncio client always connect the same way.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence, Union

from tritonclient.grpc import KeepAliveOptions

from .errors import InvalidInputError
from .retry import RetryPolicy

# tritonclient's own default: let the server's limit, not the client's, decide how large a request may be.
MAX_MESSAGE_BYTES = 2**31 - 1
COMPRESSIONS = (None, "gzip", "deflate")
# gRPC's own name resolvers: `dns:///headless-service:8001` (every address the name has, re-resolved as
# connections drop), `ipv4:10.0.0.1:8001,10.0.0.2:8001`, `unix:/path`. Plain 'HOST:PORT' needs no scheme.
GRPC_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:")
LOAD_BALANCING = (None, "pick_first", "round_robin")
# How soon gRPC may resolve a name again after a connection to one of its addresses dropped (gRPC's default
# is 30 s: a pod that a rolling update replaced would be missing from the balancing that long).
DNS_MIN_RERESOLUTION_MS = 1000

Urls = Union[str, Sequence[str]]


@dataclass(frozen=True)
class ConnectionOptions:
    """Everything about the gRPC channel(s); paths for TLS files are PEM files."""

    urls: tuple[str, ...]
    ssl: bool = False
    root_certificates: Path | None = None
    private_key: Path | None = None
    certificate_chain: Path | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    compression: str | None = None
    keepalive: KeepAliveOptions | None = None
    # gRPC's own reconnect backoff grows to 2 minutes by default, which would keep a channel failing
    # long after a restarted server is back; our RetryPolicy does the backing off instead.
    max_reconnect_backoff_ms: int = 1000
    # "round_robin": one channel spreads requests over every address a target resolves to (a headless
    # Service's pods); None: gRPC's default, pick_first (one connection).
    load_balancing: str | None = None

    def __post_init__(self) -> None:
        if not self.urls or any(not isinstance(u, str) or not u.strip() for u in self.urls):
            raise InvalidInputError(f"need at least one server URL as 'HOST:PORT', got {self.urls!r}")
        for url in self.urls:
            if "://" in url and not url.startswith(GRPC_TARGET_SCHEMES):
                raise InvalidInputError(f"gRPC URLs are 'HOST:PORT' without a scheme (or a gRPC target such as "
                                        f"'dns:///NAME:PORT'), got {url!r}")
        if self.load_balancing not in LOAD_BALANCING:
            raise InvalidInputError(f"load_balancing must be one of {LOAD_BALANCING}, got {self.load_balancing!r}")
        if self.compression not in COMPRESSIONS:
            raise InvalidInputError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        for name in ("root_certificates", "private_key", "certificate_chain"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise InvalidInputError(f"{name}: no such file {path}")
        if (self.private_key is None) != (self.certificate_chain is None):
            raise InvalidInputError("mutual TLS needs both private_key and certificate_chain")

    @property
    def uses_tls(self) -> bool:
        return self.ssl or any(p is not None for p in (self.root_certificates, self.private_key, self.certificate_chain))

    def channel_args(self) -> list[tuple[str, int]]:
        keepalive = self.keepalive or KeepAliveOptions()
        return [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(keepalive.keepalive_permit_without_calls)),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", min(100, self.max_reconnect_backoff_ms)),
            ("grpc.min_reconnect_backoff_ms", min(100, self.max_reconnect_backoff_ms)),
            ("grpc.max_reconnect_backoff_ms", self.max_reconnect_backoff_ms),
            *([("grpc.lb_policy_name", self.load_balancing),
               ("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_RERESOLUTION_MS)] if self.load_balancing else []),
        ]

    def client_kwargs(self, url: str) -> dict:
        """Keyword arguments for tritonclient's (sync or aio) InferenceServerClient for one URL."""
        kwargs: dict = {"url": url, "channel_args": self.channel_args()}
        if self.uses_tls:
            kwargs.update(ssl=True, root_certificates=_str(self.root_certificates),
                          private_key=_str(self.private_key), certificate_chain=_str(self.certificate_chain))
        return kwargs


def as_urls(url: Urls) -> tuple[str, ...]:
    return (url,) if isinstance(url, str) else tuple(url)


def as_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


class EndpointPool:
    """Round-robin over URLs, skipping the ones that failed recently.

    A URL that fails with a transient error is benched for a backoff that grows with its consecutive
    failures; requests go to the others meanwhile (failover). When every URL is benched, callers wait
    for the first to come back. Thread-safe; also used from one asyncio loop.
    """

    def __init__(self, urls: Sequence[str], policy: RetryPolicy, clock=time.monotonic):
        self.urls = tuple(urls)
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0
        self._failures = dict.fromkeys(self.urls, 0)
        self._benched_until = dict.fromkeys(self.urls, 0.0)

    def pick(self) -> str:
        """The next URL that is not benched, or the one that comes back soonest."""
        with self._lock:
            now = self._clock()
            for step in range(len(self.urls)):
                url = self.urls[(self._next + step) % len(self.urls)]
                if self._benched_until[url] <= now:
                    self._next = (self._next + step + 1) % len(self.urls)
                    return url
            return min(self.urls, key=self._benched_until.__getitem__)

    def wait_s(self) -> float:
        """Seconds until some URL is usable again (0 if one is usable now)."""
        with self._lock:
            return max(0.0, min(self._benched_until.values()) - self._clock())

    def failed(self, url: str) -> None:
        with self._lock:
            self._benched_until[url] = self._clock() + self._policy.backoff(self._failures[url])
            self._failures[url] += 1

    def succeeded(self, url: str) -> None:
        with self._lock:
            self._failures[url] = 0
            self._benched_until[url] = 0.0
