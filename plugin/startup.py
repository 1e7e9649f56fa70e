"""What the entry points (``klarna-om`` commands, gunicorn) tell a person at start-up.

Two things: whether the public URL can work for a Saleor (and what to do when it cannot), and a
database error said in one line: what failed, where (host:port or file), and the fix.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MANIFEST_PATH = "/api/manifest"
NEXT_STEP = "In the Saleor dashboard: Apps → Install external app → paste {manifest}"


@dataclass(frozen=True)
class UrlProblem:
    """Why the public URL may not work for a Saleor, and what fixes it."""

    reason: str
    fix: str


_SET_PUBLIC_URL = (
    "set KLARNA_APP_PUBLIC_URL to the URL Saleor reaches this app at (README: Installing it into a Saleor)"
)
# (test on the host, problem): the first that matches explains the URL. Saleor's HTTP filter
# refuses loopback and private addresses unless HTTP_IP_FILTER_ALLOW_LOOPBACK_IPS / HTTP_IP_FILTER_ENABLED say otherwise.
_HOST_PROBLEMS: tuple[tuple[str, UrlProblem], ...] = (
    (
        "unspecified",
        UrlProblem("0.0.0.0 and :: are listening addresses, not addresses anyone can call", _SET_PUBLIC_URL),
    ),
    (
        "loopback",
        UrlProblem(
            "a loopback address reaches only a Saleor on this machine (not one in Docker, not Saleor Cloud), "
            "and only with HTTP_IP_FILTER_ALLOW_LOOPBACK_IPS=True in Saleor's environment",
            "for a Saleor in Docker use http://host.docker.internal:<port>; for Saleor Cloud a public https URL "
            "(a tunnel); or " + _SET_PUBLIC_URL,
        ),
    ),
    (
        "private",
        UrlProblem(
            "a private address is refused by Saleor's IP filter unless Saleor runs with HTTP_IP_FILTER_ENABLED=False",
            "set HTTP_IP_FILTER_ENABLED=False in a local Saleor's environment, or " + _SET_PUBLIC_URL,
        ),
    ),
)


def _host_kind(host: str) -> str:
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return "loopback"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "name"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_private or address.is_link_local:
        return "private"
    return "public"


def public_url_problems(public_url: str) -> list[UrlProblem]:
    """What stands between this public URL and a Saleor that wants to install the app."""
    parts = urlsplit(public_url)
    kind = _host_kind((parts.hostname or "").lower())
    problems = [problem for test, problem in _HOST_PROBLEMS if test == kind]
    if kind in ("name", "public") and parts.scheme != "https":
        problems.append(
            UrlProblem(
                "Saleor Cloud installs apps only over https",
                "serve behind https (a proxy or a tunnel) and set KLARNA_APP_PUBLIC_URL to the https URL",
            )
        )
    return problems


def next_step(public_base: str) -> str:
    return NEXT_STEP.format(manifest=public_base + MANIFEST_PATH)


# -- the database, in one line -----------------------------------------------------------------

# (words in the driver's message, what it means, the fix): the first match explains the error.
_DATABASE_CAUSES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (
        ("connection refused", "could not connect", "timeout expired", "timed out", "no route to host"),
        "does not answer",
        "start PostgreSQL there, or set DATABASE_URL to a server that answers",
    ),
    (
        ("could not translate host name", "name or service not known", "nodename nor servname"),
        "has a host name that does not resolve",
        "fix the host in DATABASE_URL",
    ),
    (
        ("password authentication failed", "role", "no password supplied", "no pg_hba.conf entry"),
        "refuses the user or password",
        "fix the user and password in DATABASE_URL",
    ),
    (
        ("unable to open database file", "readonly database", "disk i/o error", "permission denied"),
        "cannot be opened",
        "make the folder writable or set KLARNA_APP_INSTANCE_PATH (or DATABASE_URL) to a writable place",
    ),
    (
        ("database",),
        "has no such database",
        "create it (createdb) or fix the database name in DATABASE_URL",
    ),
)


def database_location(url: str) -> str:
    """Where the database is, for people: the SQLite file, or PostgreSQL's host:port/name (no password)."""
    try:
        parsed: URL = make_url(url)
    except ArgumentError:
        return "an unparsable DATABASE_URL"
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite file {parsed.database or ':memory:'}"
    host = parsed.host or "localhost"
    return f"PostgreSQL at {host}:{parsed.port or 5432}/{parsed.database or ''} (user {parsed.username or '-'})"


def database_error(url: str, exc: BaseException) -> str:
    """One line: what failed, where, and the fix."""
    if isinstance(exc, ArgumentError):
        scheme = url.split(":", 1)[0] if ":" in url else url[:20]
        return (
            f"DATABASE_URL (scheme {scheme!r}) is not a database URL this app can use; "
            "fix: postgresql://user:password@host:5432/name, or leave it unset for the SQLite file in the instance folder"
        )
    if isinstance(exc, OSError):
        return (
            f"the database {database_location(url)} cannot be created: {exc.strerror or exc}; "
            "fix: set KLARNA_APP_INSTANCE_PATH (or DATABASE_URL) to a writable place"
        )
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    text = " ".join(line.strip() for line in detail[:3]).lower()
    for words, meaning, fix in _DATABASE_CAUSES:
        if any(word in text for word in words):
            return f"the database {database_location(url)} {meaning}; fix: {fix}"
    first = detail[0][:200] if detail else exc.__class__.__name__
    return f"the database {database_location(url)} failed: {first}; fix: check DATABASE_URL and the server's log"
