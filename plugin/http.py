"""Outgoing HTTP with bounds: a total deadline, a response-size cap, no redirects, and for URLs that
come from outside (a Saleor API URL given to /api/register) an address filter applied at connect time.

Saleor does the same for its own outgoing calls (``requests-hardened``: private, loopback and
link-local addresses refused after name resolution, loopback only by an explicit setting, redirects
never followed). Checking at connect time, on the addresses actually dialled, is what defeats DNS
tricks: a host name that resolves to 10.0.0.5 is refused, whatever the URL looks like.

The deadline covers the whole exchange (connect, headers, body): a watchdog shuts the socket down
when it passes, so a server trickling a byte every few seconds cannot hold a call past it. The body
is read up to the cap and no further, whatever ``Content-Length`` claims.

Mount :class:`BoundedAdapter` on a ``requests.Session`` (see :func:`bounded_session`); the clients
do, and so does gql's transport session in the Saleor client.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import ipaddress
import itertools
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

__all__ = [
    "AddressRefused",
    "BoundedAdapter",
    "Bounds",
    "DeadlineExceeded",
    "ResponseTooLarge",
    "SlidingWindow",
    "address_allowed",
    "bounded_session",
    "refusal",
]

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Bounds:
    """Limits for one kind of outgoing call."""

    deadline: float = 20.0  # seconds for the whole exchange
    max_bytes: int = 4 * 1024 * 1024  # the response body (after decompression)
    filter_addresses: bool = False  # refuse non-public addresses at connect time
    allow_loopback: bool = False  # with the filter: admit 127.0.0.0/8 and ::1 (local development)


class DeadlineExceeded(requests.exceptions.ReadTimeout):
    """The exchange did not finish within the total deadline."""


class ResponseTooLarge(requests.ConnectionError):
    """The response body exceeds the cap; the connection is dropped unread."""


class AddressRefused(NewConnectionError):
    """The host resolves only to addresses the filter refuses (private, loopback, link-local…)."""


def refusal(exc: BaseException) -> AddressRefused | None:
    """The :class:`AddressRefused` behind a requests error, if that is what it was."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, AddressRefused):
            return current
        reason = getattr(current.args[0], "reason", None) if current.args else None
        if isinstance(reason, AddressRefused):
            return reason
        current = current.__cause__ or current.__context__
    return None


def address_allowed(address: str, *, allow_loopback: bool) -> bool:
    """Saleor's rule: only globally routable unicast addresses, loopback when explicitly allowed."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return allow_loopback
    return ip.is_global and not ip.is_multicast


# -- the deadline ---------------------------------------------------------------------------------


class _Call:
    """One exchange: its deadline and the sockets it used, which the watchdog shuts down."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.sockets: list[socket.socket] = []
        self.expired = False
        self.done = False
        self.lock = threading.Lock()

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.001)

    def track(self, sock: socket.socket | None) -> None:
        if sock is not None:
            with self.lock:
                self.sockets.append(sock)

    def expire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.expired = True
            sockets = list(self.sockets)
        for sock in sockets:
            # The plain socket method: SSLSocket.shutdown would also drop its TLS state under the
            # reading thread's feet; the reader should just see the connection end.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def finish(self) -> None:
        with self.lock:
            self.done = True


class _Watchdog:
    """One daemon thread for every deadline in the process (a heap, not a timer per call)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Call]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, call: _Call) -> None:
        with self._cond:
            heapq.heappush(self._heap, (call.deadline, next(self._seq), call))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="klarna-om-http-deadline", daemon=True)
                self._thread.start()
            if self._heap[0][2] is call:  # wake the watchdog only when it must wake earlier
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                at, _, call = self._heap[0]
                delay = at - time.monotonic()
                if delay > 0 and not call.done:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            if not call.done:
                call.expire()


_WATCHDOG = _Watchdog()
_current = threading.local()


def _active_call() -> _Call | None:
    return getattr(_current, "call", None)


@contextmanager
def _exchange(deadline: float) -> Iterator[_Call]:
    call = _Call(time.monotonic() + deadline)
    _WATCHDOG.arm(call)
    _current.call = call
    try:
        yield call
    finally:
        _current.call = None
        call.finish()


# -- connections: the address filter and socket tracking -----------------------------------------


class _BoundedConnectionMixin:
    """Dial only allowed addresses; hand every socket to the current exchange's watchdog."""

    bounds: Bounds
    host: str
    port: int
    timeout: Any
    socket_options: Any
    source_address: Any
    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        call = _active_call()
        timeout = self.timeout
        if call is not None and isinstance(timeout, int | float):
            timeout = min(timeout, call.remaining())
        host = self.host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, self.port, 0, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(host, self, exc) from exc  # type: ignore[arg-type]  # the mixin is an HTTPConnection at runtime
        error: OSError | None = None
        refused = []
        for family, kind, proto, _, address in infos:
            if self.bounds.filter_addresses and not address_allowed(
                str(address[0]), allow_loopback=self.bounds.allow_loopback
            ):
                refused.append(str(address[0]))
                continue
            sock = socket.socket(family, kind, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                if call is not None:
                    call.track(sock)
                sock.connect(address)
                return sock
            except TimeoutError as exc:
                sock.close()
                raise ConnectTimeoutError(self, f"Connection to {host} timed out") from exc
            except OSError as exc:
                sock.close()
                error = exc
        if error is None and refused:
            raise AddressRefused(self, f"{host} resolves only to refused addresses ({', '.join(sorted(set(refused)))})")  # type: ignore[arg-type]  # the mixin is an HTTPConnection at runtime
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}")  # type: ignore[arg-type]  # the mixin is an HTTPConnection at runtime

    def request(self, *args: Any, **kwargs: Any) -> None:
        call = _active_call()
        if call is not None:
            if self.sock is None:
                self.connect()  # type: ignore[attr-defined]  # HTTPConnection.connect, after this mixin in the MRO
            call.track(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]  # HTTPConnection.request, after this mixin in the MRO


@functools.lru_cache(maxsize=16)
def _pool_classes(bounds: Bounds) -> dict[str, type[HTTPConnectionPool]]:
    http = type("BoundedHTTPConnection", (_BoundedConnectionMixin, HTTPConnection), {"bounds": bounds})
    https = type("BoundedHTTPSConnection", (_BoundedConnectionMixin, HTTPSConnection), {"bounds": bounds})
    return {
        "http": type("BoundedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
        "https": type("BoundedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
    }


# -- the adapter ----------------------------------------------------------------------------------


class BoundedAdapter(HTTPAdapter):
    """An HTTPAdapter whose every exchange ends by ``bounds.deadline`` and reads ≤ ``bounds.max_bytes``.

    The body is always read here (``stream`` is ignored), so callers get ``response.content`` as usual.
    With the address filter on, proxies are ignored (a proxy would dial the target for us).
    """

    def __init__(self, bounds: Bounds, **kwargs: Any) -> None:
        self.bounds = bounds
        kwargs.setdefault("max_retries", 0)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self.bounds)

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        request.headers["Accept-Encoding"] = "gzip, deflate"
        with _exchange(self.bounds.deadline) as call:
            try:
                # A proxy would dial the target for us and defeat the address filter.
                proxies = None if self.bounds.filter_addresses else proxies
                response = super().send(
                    request, stream=True, timeout=timeout, verify=verify, cert=cert, proxies=proxies
                )
            except requests.RequestException as exc:
                if call.expired:
                    raise DeadlineExceeded(f"no answer within {self.bounds.deadline:g} s", request=request) from exc
                raise
            try:
                body = _read_capped(response, self.bounds.max_bytes)
            except ResponseTooLarge:
                response.close()
                raise
            except Exception as exc:
                response.close()
                if call.expired:
                    raise DeadlineExceeded(f"no answer within {self.bounds.deadline:g} s", request=request) from exc
                raise requests.ConnectionError(f"reading the response failed: {exc.__class__.__name__}") from exc
            if call.expired:  # a close-delimited body cut by the watchdog looks complete: it is not
                response.close()
                raise DeadlineExceeded(f"no answer within {self.bounds.deadline:g} s", request=request)
            call.finish()
        response._content = body
        response._content_consumed = True
        response.raw.release_conn()
        return response


def _read_capped(response: requests.Response, cap: int) -> bytes:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > cap:
        raise ResponseTooLarge(f"the answer is {int(length)} bytes, more than the {cap} allowed")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    decoder: Callable[[bytes, int], bytes] | None = None
    if encoding in ("gzip", "deflate", "x-gzip"):
        inflater = zlib.decompressobj(47 if encoding != "deflate" else zlib.MAX_WBITS)

        def decoder(data: bytes, room: int) -> bytes:
            out = inflater.decompress(data, room)
            if inflater.unconsumed_tail:
                raise ResponseTooLarge(f"the answer inflates past the {cap} bytes allowed")
            return out

    elif encoding not in ("identity", ""):
        raise requests.ConnectionError(f"unsupported Content-Encoding {encoding[:32]!r}")
    parts: list[bytes] = []
    size = 0
    for chunk in response.raw.stream(_CHUNK, decode_content=False):
        data = decoder(chunk, cap + 1 - size) if decoder is not None else chunk
        size += len(data)
        if size > cap:
            raise ResponseTooLarge(f"the answer exceeds the {cap} bytes allowed")
        parts.append(data)
    return b"".join(parts)


def bounded_session(bounds: Bounds, **adapter_kwargs: Any) -> requests.Session:
    """A new session that sends everything through :class:`BoundedAdapter` (see :func:`harden`)."""
    return harden(requests.Session(), bounds, **adapter_kwargs)


def harden(session: requests.Session, bounds: Bounds, **adapter_kwargs: Any) -> requests.Session:
    """Mount a :class:`BoundedAdapter` for http and https on ``session`` (ours or gql's); redirects
    are refused. With the address filter, proxy and netrc settings from the environment are ignored:
    they would bypass the filter or add credentials to URLs chosen by a caller."""
    adapter = BoundedAdapter(bounds, **adapter_kwargs)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = 0
    if bounds.filter_addresses:
        session.trust_env = False
    return session


class SlidingWindow:
    """At most ``limit`` events per ``window`` seconds per key (in-process; a bound, not a quota)."""

    def __init__(self, limit: int, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._events: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            if len(self._events) > 10_000:  # forget idle keys so the table stays small
                self._events = {k: v for k, v in self._events.items() if v and v[-1] > now - self.window}
            recent = [t for t in self._events.get(key, ()) if t > now - self.window]
            if len(recent) >= self.limit:
                self._events[key] = recent
                return False
            recent.append(now)
            self._events[key] = recent
            return True
