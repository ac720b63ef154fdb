"""Triton's HTTP port as clients and load balancers see it: every request is passed to Triton's own HTTP
endpoint on a private loopback port, except that `/v2/health/ready` answers 503 once a drain has started.

Why a front at all: Triton has no way to report "not ready" while it keeps serving. Its own SIGTERM handling
closes the HTTP port at once but then refuses in-flight ensemble steps ("Server is stopping") and answers new
requests with NOT_FOUND while it unloads; so a drain that lets accepted work finish must keep Triton running,
and readiness must come from someone else. This module is that someone: a small HTTP/1.1 relay (requests
and responses framed by Content-Length or chunked encoding, keep-alive and `Expect: 100-continue` kept), so
every request on every connection is looked at, not only a connection's first. gRPC does not pass here.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from typing import Awaitable, Callable

log = logging.getLogger("clip_triton.server")

READY_PATH = "/v2/health/ready"
MAX_HEAD_BYTES = 64 * 1024
PIECE_BYTES = 1 << 20
_NOT_READY_BODY = b'{"error":"draining: this server is about to stop"}'
_NOT_READY_HEAD = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(_NOT_READY_BODY))
_HEAD_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class HttpFront:
    """Listens on (host, port) and relays to Triton's HTTP endpoint at 127.0.0.1:upstream_port."""

    def __init__(self, host: str, port: int, upstream_port: int):
        self.host, self.port, self.upstream_port = host, port, upstream_port
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()

    @property
    def draining(self) -> bool:
        return self._draining

    def start(self) -> "HttpFront":
        """Bind now (so a taken port fails here, in the caller), then serve on a daemon thread's event loop."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.create_server((self.host, self.port), family=family, backlog=512)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="clip-triton-http-front", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accepted, sock=listener, limit=MAX_HEAD_BYTES), self._loop).result()
        return self

    def drain(self) -> None:
        """From now on, tell load balancers this server is not ready (everything else still passes)."""
        self._draining = True

    def stop(self) -> None:
        """Close the port and every open connection; idempotent."""
        if self._loop is None:
            return
        loop, self._loop = self._loop, None

        async def close() -> None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        loop.close()

    # -- one client connection -----------------------------------------------------------------------------
    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    writer.write(_HEAD_TOO_LARGE)
                    await writer.drain()
                    return
                except asyncio.IncompleteReadError:
                    return  # the client closed the connection between requests
                method, path, headers = _parse_request_head(head)
                if self._draining and path == READY_PATH:
                    await _skip_body(reader, headers)
                    writer.write(_NOT_READY_HEAD + (b"" if method == "HEAD" else _NOT_READY_BODY))
                    await writer.drain()
                    if _closes(headers):
                        return
                    continue
                if upstream is None:
                    upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port, limit=MAX_HEAD_BYTES)
                keep_alive = await self._relay_exchange(method, head, headers, reader, writer, *upstream)
                if not keep_alive or _closes(headers):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as error:
            log.debug("HTTP front: connection ended: %s", error)
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            for stream in (writer, upstream[1] if upstream else None):
                if stream is not None:
                    stream.close()

    async def _relay_exchange(self, method: str, head: bytes, headers: dict[str, str],
                              client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                              upstream_reader: asyncio.StreamReader, upstream_writer: asyncio.StreamWriter) -> bool:
        """One request to Triton and its response back; returns whether the connection may be reused.

        `Expect: 100-continue` is answered here (as a proxy may) and not passed on, so the body never waits
        on whether Triton would have sent the interim response itself.
        """
        if headers.get("expect", "").lower() == "100-continue":
            client_writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            head = b"\r\n".join(line for line in head.split(b"\r\n") if not line.lower().startswith(b"expect:"))
        await _relay_message(head, client_reader, upstream_writer, headers, method, None)
        while True:
            status, response_head, response_headers = await _read_response_head(upstream_reader)
            if status >= 200:
                break
            client_writer.write(response_head)  # an interim response (Triton sends none today)
        reusable = await _relay_message(response_head, upstream_reader, client_writer, response_headers, method, status)
        return reusable and not _closes(response_headers)


def _parse_request_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
    return method, target.split("?", 1)[0], _parse_headers(lines[1:])


def _parse_headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, separator, value = line.partition(":")
        if separator:
            headers[name.strip().lower()] = value.strip()
    return headers


async def _read_response_head(reader: asyncio.StreamReader) -> tuple[int, bytes, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    return status, head, _parse_headers(lines[1:])


def _chunked(headers: dict[str, str]) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()


def _closes(headers: dict[str, str]) -> bool:
    return headers.get("connection", "").lower() == "close"


async def _skip_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    async def discard(data: bytes) -> None:
        return None
    await _copy_body(reader, discard, headers, body_until_close=False)


async def _relay_message(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         headers: dict[str, str], method: str, status: int | None) -> bool:
    """Send `head` and copy its body (`status` None: a request's); returns whether the message was framed (a
    response without a length runs to the end of the connection, which then cannot be reused).

    A body of known length up to PIECE_BYTES goes out in one write with its head: written apart, the second
    small segment waited for the peer's delayed ACK (inference through the front took 64 ms instead of 20).
    """
    if status is not None and (method == "HEAD" or status in (204, 304) or 100 <= status < 200):
        writer.write(head)
        await writer.drain()
        return True
    length = headers.get("content-length")
    if length is not None and not _chunked(headers) and int(length) <= PIECE_BYTES:
        writer.write(head + await reader.readexactly(int(length)))
        await writer.drain()
        return True
    writer.write(head)

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    framed = await _copy_body(reader, send, headers, body_until_close=status is not None)
    await writer.drain()
    return framed


async def _copy_body(reader: asyncio.StreamReader, send: Callable[[bytes], Awaitable[None]],
                     headers: dict[str, str], body_until_close: bool) -> bool:
    """Chunked, Content-Length, or (responses only) until the peer closes; returns whether it was framed."""
    if _chunked(headers):
        while True:
            size_line = await reader.readuntil(b"\r\n")
            await send(size_line)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    line = await reader.readuntil(b"\r\n")
                    await send(line)
                    if line == b"\r\n":
                        return True
            await _copy_exactly(reader, send, size + 2)
    if "content-length" in headers:
        await _copy_exactly(reader, send, int(headers["content-length"]))
        return True
    if body_until_close:
        while data := await reader.read(PIECE_BYTES):
            await send(data)
        return False
    return True  # a request without a body


async def _copy_exactly(reader: asyncio.StreamReader, send: Callable[[bytes], Awaitable[None]], count: int) -> None:
    while count > 0:
        data = await reader.read(min(count, PIECE_BYTES))
        if not data:
            raise asyncio.IncompleteReadError(b"", count)
        await send(data)
        count -= len(data)
