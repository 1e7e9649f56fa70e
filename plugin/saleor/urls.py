"""Saleor API URLs from outside (the ``Saleor-Api-Url`` header of /api/register), parsed once.

A URL is taken apart with ``urllib.parse`` and rebuilt from its parts, so what the allowlist
matched is exactly what the app later calls: no userinfo (Basic credentials an attacker could
choose), no query or fragment, no backslashes or whitespace that parsers read differently.
The allowlist compares parsed parts: scheme and host case-insensitively, default ports made
explicit, ``/graphql`` and ``/graphql/`` as one path; a ``re:`` entry is split the same way into a
scheme, a host and a path pattern, each matched in full against its own part only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
_FORBIDDEN = re.compile(r"[\s\\\x00-\x1f\x7f]")
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)$")


class BadSaleorUrl(ValueError):
    """Not an absolute http(s) URL this app will call."""


@dataclass(frozen=True)
class SaleorUrl:
    scheme: str  # lower case
    host: str  # lower case; IPv6 without brackets
    port: int  # explicit, the scheme's default when absent
    path: str  # as given, never empty
    url: str  # rebuilt without userinfo, query or fragment: the URL to store and call

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def path_key(self) -> str:
        """The path with ``/graphql`` and ``/graphql/`` made equal."""
        return self.path.rstrip("/") or "/"


def parse(raw: str) -> SaleorUrl:
    """Parse and clean ``raw``; raise :class:`BadSaleorUrl` if it is not a plain http(s) URL."""
    if not raw or len(raw) > 512 or _FORBIDDEN.search(raw):
        raise BadSaleorUrl("not a URL")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise BadSaleorUrl("not a URL") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BadSaleorUrl("only http and https URLs")
    hostport = parts.netloc.rpartition("@")[2]
    host_text = hostport.rsplit(":", 1)[0] if port is not None or hostport.endswith(":") else hostport
    if not parts.hostname or not _HOST.match(host_text):
        raise BadSaleorUrl("no valid host")
    if parts.query or parts.fragment or raw.rstrip("?#") != raw:
        raise BadSaleorUrl("a Saleor API URL has no query or fragment")
    host = parts.hostname.lower()
    port = port if port is not None else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise BadSaleorUrl("bad port")
    path = parts.path or "/"
    # The host as written (Saleor sends the same header with every webhook), without userinfo.
    return SaleorUrl(scheme, host, port, path, f"{scheme}://{hostport}{path}")


@dataclass(frozen=True)
class _Pattern:
    scheme: re.Pattern[str]
    netloc: re.Pattern[str]
    path: re.Pattern[str]

    def matches(self, url: SaleorUrl) -> bool:
        host = f"[{url.host}]" if ":" in url.host else url.host
        netlocs = {url.netloc, f"{host}:{url.port}"}
        paths = {url.path, url.path_key, url.path_key.rstrip("/") + "/"}
        return (
            self.scheme.fullmatch(url.scheme) is not None
            and any(self.netloc.fullmatch(n) for n in netlocs)
            and any(self.path.fullmatch(p) for p in paths)
        )


def _compile_pattern(text: str) -> _Pattern:
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise BadSaleorUrl("a re: entry reads re:<scheme>://<host>/<path>, each part a regular expression")
    netloc, slash, path = rest.partition("/")
    if not netloc:
        raise BadSaleorUrl("a re: entry needs a host pattern")
    try:
        return _Pattern(
            re.compile(scheme, re.IGNORECASE), re.compile(netloc, re.IGNORECASE), re.compile(slash + path or "/")
        )
    except re.error as exc:
        raise BadSaleorUrl(f"bad regular expression: {exc}") from None


class AllowList:
    """``KLARNA_APP_ALLOWED_SALEOR_URLS`` compiled: plain URLs and ``re:`` patterns."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self._exact: set[tuple[str, str, int, str]] = set()
        self._patterns: list[_Pattern] = []
        for entry in entries:
            if entry.startswith("re:"):
                self._patterns.append(_compile_pattern(entry[3:]))
            else:
                url = parse(entry)
                self._exact.add((url.scheme, url.host, url.port, url.path_key))

    def __bool__(self) -> bool:
        return bool(self._exact or self._patterns)

    def admits(self, url: SaleorUrl) -> bool:
        if (url.scheme, url.host, url.port, url.path_key) in self._exact:
            return True
        return any(pattern.matches(url) for pattern in self._patterns)
