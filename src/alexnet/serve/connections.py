"""Slow and stalled clients: deadlines on reading a request, and limits that count work rather than sockets.

uvicorn calls the application only once a request's headers are complete, and its `limit_concurrency` counts
open connections: clients that send half a request and wait would hold every slot and the service would answer
everyone else 503. Here instead:

- `guarded_protocol` is uvicorn's httptools protocol with one timer per connection. A connection whose request
  headers are not complete `header_timeout` seconds after it opened (or after its previous answer ended) is closed;
  so is one whose headers pass `max_header_bytes` (431), and one whose body falls more than `body_timeout`
  seconds behind `min_upload_rate` (408): a stall, or a trickle slower than the rate. An upload that keeps
  sending at the rate or faster is never cut. Past `max_connections` open connections, new ones are closed at
  once (503), which bounds the file descriptors and the memory they hold.
- `Admission` (used by the routes, after the body has arrived) bounds the requests being decoded and predicted
  (`max_in_flight`) and the bytes of request bodies held in memory, all requests together: past either, the
  answer is 503 at once, with Retry-After, never a wait.

Everything here runs on the event loop's thread: the counters are plain integers.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterator

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

RETRY_AFTER_S = 1  # what a 503 tells the client to wait before retrying
FD_RESERVE = 256  # file descriptors kept for the process itself (model files, threads' pipes, logs) under the cap


@dataclass(frozen=True)
class ConnectionLimits:
    """How long and how much a connection may take to deliver its request (see the module's docstring)."""

    header_timeout: float = 10.0  # seconds for the whole request line and headers
    body_timeout: float = 10.0  # seconds an upload may stall, or fall behind min_upload_rate
    min_upload_rate: float = 1024.0  # bytes/s a body must average; 0 = only stalls are dropped
    max_header_bytes: int = 16 * 2 ** 10  # request line and headers (uvicorn's h11 and Node.js also stop at 16 KiB)
    max_connections: int = 4096  # open connections; more are closed at once


class Counters:
    """What /health reports about connections and admitted work."""

    __slots__ = ("open", "max_connections", "refused_connections", "header_timeouts", "body_timeouts",
                 "headers_too_large", "in_flight", "body_bytes", "refused_busy", "refused_memory")

    def __init__(self) -> None:
        self.open = self.refused_connections = self.header_timeouts = self.body_timeouts = 0
        self.headers_too_large = self.in_flight = self.body_bytes = self.refused_busy = self.refused_memory = 0
        self.max_connections: int | None = None  # set by the server that uses these counters

    def connections(self) -> dict[str, Any]:
        return {"open": self.open, "limit": self.max_connections, "refused": self.refused_connections,
                "header_timeouts": self.header_timeouts, "body_timeouts": self.body_timeouts,
                "headers_too_large": self.headers_too_large}


class Overloaded(Exception):
    """A request refused for want of capacity: 503 with Retry-After; the same request may succeed later."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class HeldBody:
    """The bytes of one request's body held in memory, counted against the service's budget until released."""

    __slots__ = ("admission", "held")

    def __init__(self, admission: Admission):
        self.admission, self.held = admission, 0

    def expect(self, declared: int) -> None:
        """Refuse at once a body whose declared length cannot fit beside the bodies held now."""
        self.admission.check_memory(declared)

    def add(self, n: int) -> None:
        self.admission.check_memory(n)
        self.admission.counters.body_bytes += n
        self.held += n

    def release(self) -> None:
        self.admission.counters.body_bytes -= self.held
        self.held = 0


class Admission:
    """The work a service takes on at once: `max_in_flight` requests whose bodies have arrived (being decoded,
    queued for the model or predicted), and `max_body_bytes` bytes of request bodies held in memory."""

    def __init__(self, max_in_flight: int, max_body_bytes: int, counters: Counters | None = None):
        self.max_in_flight, self.max_body_bytes = max_in_flight, max_body_bytes
        self.counters = counters or Counters()

    def as_dict(self) -> dict[str, Any]:
        c = self.counters
        return {"in_flight": c.in_flight, "limit": self.max_in_flight, "body_bytes": c.body_bytes,
                "body_bytes_limit": self.max_body_bytes, "refused": c.refused_busy + c.refused_memory,
                "refused_busy": c.refused_busy, "refused_memory": c.refused_memory}

    def check_memory(self, n: int) -> None:
        if self.counters.body_bytes + n > self.max_body_bytes:
            self.counters.refused_memory += 1
            raise Overloaded(f"the service holds {self.counters.body_bytes:,} bytes of uploads, and {n:,} more would "
                             f"pass its limit of {self.max_body_bytes:,}; retry in {RETRY_AFTER_S} s")

    @contextlib.contextmanager
    def body(self) -> Iterator[HeldBody]:
        held = HeldBody(self)
        try:
            yield held
        finally:
            held.release()

    @contextlib.contextmanager
    def work(self) -> Iterator[None]:
        c = self.counters
        if c.in_flight >= self.max_in_flight:
            c.refused_busy += 1
            raise Overloaded(f"the service is answering {c.in_flight} requests, the most it takes at once; retry in "
                             f"{RETRY_AFTER_S} s")
        c.in_flight += 1
        try:
            yield
        finally:
            c.in_flight -= 1


def connection_cap(wanted: int) -> int:
    """`wanted` connections, or fewer when the open-files limit cannot hold them beside FD_RESERVE descriptors.
    The soft limit is raised towards the hard one first, as far as needed."""
    try:
        import resource  # lazy: Unix only
    except ImportError:  # no rlimits on this platform
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


# Where the parser is in the connection's current request.
HEAD, BODY, DONE = 0, 1, 2


def error_bytes(status: int, message: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 answer {"error": message} that closes the connection, written outside any ASGI cycle."""
    body = json.dumps({"error": message}).encode()
    head = [STATUS_LINE[status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    if status == 503:
        head.append(b"retry-after: %d\r\n" % RETRY_AFTER_S)
    head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    return b"".join(head) + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines on reading requests; `guarded_protocol` binds its limits.

    One timer per connection, re-armed lazily: the hooks only move `_deadline` (a float), and the timer, when it
    fires early, re-arms itself at the deadline. A keep-alive connection answering requests back to back costs
    about one timer event per `header_timeout`.
    """

    limits: ConnectionLimits = ConnectionLimits()
    counters: Counters = Counters()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._phase = HEAD
        self._head_bytes = 0  # bytes received while the current request's headers were incomplete
        self._deadline = math.inf  # loop time by which the current phase must be over; inf = none (ours to act)
        self._now = 0.0  # loop time of the data being parsed
        self._finished_scope: Any = None  # the scope of the last request read whole (uvicorn makes one per request)
        self._timer: Any = None
        self._timer_at = math.inf

    # -- the connection

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        counters = self.counters
        counters.open += 1
        if counters.open > self.limits.max_connections:
            counters.refused_connections += 1
            transport.write(error_bytes(503, f"the service has {counters.open - 1} connections open, the most it "
                                             f"takes; retry in {RETRY_AFTER_S} s", self.server_state.default_headers))
            transport.close()
            return
        self._arm(self.loop.time() + self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.counters.open -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._now = self.loop.time()
        phase = self._phase
        if phase != BODY:
            if phase == DONE:  # the next request begins; its clock starts when the last answer ends
                self._phase = HEAD
            self._head_bytes += len(data)
        HttpToolsProtocol.data_received(self, data)
        phase = self._phase
        if phase == BODY:
            if self._timer_at > self._deadline:  # only once per request: its body deadline is the earliest
                self._arm(self._deadline)
        elif phase == HEAD and self._head_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
            self.counters.headers_too_large += 1
            self._close(431, f"the request line and headers are over {self.limits.max_header_bytes:,} bytes")

    # -- the parser's callbacks

    def on_headers_complete(self) -> None:
        HttpToolsProtocol.on_headers_complete(self)
        self._phase, self._head_bytes = BODY, 0
        self._deadline = self._now + self.limits.body_timeout  # armed by data_received once parsing returns

    def on_body(self, body: bytes) -> None:
        HttpToolsProtocol.on_body(self, body)
        # Each byte buys 1/min_upload_rate seconds, but never more than body_timeout ahead of now: a stall or a
        # trickle below the rate runs out of credit within body_timeout; a steady upload at the rate never does.
        limits = self.limits
        latest = self._now + limits.body_timeout
        if limits.min_upload_rate > 0:
            deadline = self._deadline + len(body) / limits.min_upload_rate
            self._deadline = deadline if deadline < latest else latest
        else:
            self._deadline = latest

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        self._finished_scope = self.scope
        if self.cycle.response_complete:  # answered before its body ended (a refusal): the next request's turn
            self._phase, self._head_bytes = HEAD, 0
            self._arm(self._now + self.limits.header_timeout)
        else:
            self._phase, self._deadline = DONE, math.inf  # the application's turn: no deadline on the client

    def on_response_complete(self) -> None:
        HttpToolsProtocol.on_response_complete(self)
        if self.transport.is_closing() or self._phase == BODY:
            return  # closing, or an early answer while the body still arrives: its deadline stands
        if not self.cycle.response_complete:
            return  # a pipelined request started: the application's turn again
        if self._phase == DONE:
            self._phase, self._head_bytes = HEAD, 0
        self._arm(self.loop.time() + self.limits.header_timeout)

    # -- the timer

    def _arm(self, deadline: float) -> None:
        self._deadline = deadline
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = self.loop.call_at(deadline, self._expire), deadline

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        if self.transport is None or self.transport.is_closing() or self._deadline == math.inf:
            return
        now = self.loop.time()
        if self._phase == BODY and self.flow.read_paused:
            self._arm(now + self.limits.body_timeout)  # we stopped reading (pipelining, back-pressure), not the client
        elif now < self._deadline:
            self._arm(self._deadline)
        elif self._phase == HEAD:
            self.counters.header_timeouts += 1
            if self.scope is not self._finished_scope:  # a request has begun since the last one was read
                self._close(408, f"the request's headers did not arrive within {self.limits.header_timeout:g} s")
            else:  # nothing of a request yet (a fresh or idle connection): nothing to answer
                self.transport.close()
        else:
            self.counters.body_timeouts += 1
            rate = self.limits.min_upload_rate
            pace = f" at {rate:g} bytes/s or faster" if rate > 0 else ""
            self._close(408, f"the request body did not arrive{pace}: stalled or too slow for "
                             f"{self.limits.body_timeout:g} s")

    def _close(self, status: int, message: str) -> None:
        """Answer `status` (unless an answer has begun) and close; the application, if waiting on the body, sees
        the client disconnect."""
        cycle = self.cycle if self._phase == BODY else None
        if cycle is None or not cycle.response_started:
            self.transport.write(error_bytes(status, message, self.server_state.default_headers))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def guarded_protocol(limits: ConnectionLimits, counters: Counters) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, bound to `limits`, counting into `counters`."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits, "counters": counters})
