"""Issue 5, part 3: the dashboard API (everything under /api/dashboard) under random input.

The routes are read from the app's URL map when the test runs, so whatever the dashboard offers
then is covered. Two properties:

* with a token that must not pass (random strings and JWTs, expired, other key under Saleor's kid,
  unknown kid, alg none/HS256/RS512, another app's or another Saleor's token, no MANAGE_ORDERS,
  tampered, truncated) or without the headers: a 4xx, no table changed, no Klarna call;
* with a genuine admin token and random path values, query strings and bodies: never a 5xx, and
  when refused, no table changed.

What they found is in ``test_found_by_fuzzing.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.routing import BuildError

from plugin.db.models import ProcessException
from plugin.testing.saleor import FakeSaleor
from tests.fuzz.conftest import FUZZ, World, report

API = "/api/dashboard"
ADMIN = ("MANAGE_ORDERS", "MANAGE_APPS")
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)
path_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF, blacklist_categories=("Cs",)), min_size=1, max_size=40
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def routes(app: Any) -> list[tuple[str, str, list[str]]]:
    """(method, endpoint, argument names) of every dashboard API route."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.rule == API or rule.rule.startswith(API + "/"):
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                found.append((method, rule.endpoint, sorted(rule.arguments)))
    return found


@st.composite
def urls(draw: st.DrawFn, app: Any, route: tuple[str, str, list[str]]) -> tuple[str, dict[str, Any]]:
    """(URL with a query string, the values put in its path)."""
    _, endpoint, arguments = route
    adapter = app.url_map.bind("localhost")
    for _ in range(5):
        values = {}
        for name in arguments:
            values[name] = draw(st.one_of(
                st.integers(min_value=0, max_value=2**70), st.sampled_from(["*", "default-channel", "1", "T3JkZXI6MQ==", "..", "%00"]),
                path_text, st.text(min_size=250, max_size=300),
            ))  # fmt: skip
        try:
            url = adapter.build(endpoint, values)
        except (BuildError, ValueError, TypeError):
            continue
        query = draw(st.sampled_from(["", "?limit=1", "?limit=-5", "?limit=abc", "?state=failed", "?state=x", "?limit=99999999999"])
                     | st.builds(lambda k, v: f"?{k}={v}", st.sampled_from(["limit", "state", "theme", "x"]), path_text))  # fmt: skip
        return url + query, values
    return draw(st.sampled_from([f"{API}/settings", f"{API}/operations"])), {}


def _claims(saleor: FakeSaleor) -> dict[str, Any]:
    return jwt.decode(saleor.mint_token(user_permissions=ADMIN), options={"verify_signature": False})


@st.composite
def refused_tokens(draw: st.DrawFn, saleor: FakeSaleor, other_saleor: FakeSaleor, jwks_text: str) -> tuple[str, str]:
    """(kind, token): tokens that must not authorize anything."""
    claims = _claims(saleor)
    kind = draw(st.sampled_from([
        "random", "garbage-jwt", "hs256", "hs256-public-key", "none", "other-key-same-kid", "unknown-kid", "expired",
        "no-exp", "exp-not-a-number", "other-app", "no-manage-orders", "tampered", "truncated", "other-saleor", "rs512",
    ]))  # fmt: skip
    if kind == "random":
        token = draw(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=200))
    elif kind == "garbage-jwt":
        token = ".".join(draw(st.text(alphabet=B64, max_size=60)) for _ in range(3))
    elif kind in ("hs256", "hs256-public-key"):  # the latter: algorithm confusion, the public key as secret
        if kind == "hs256":
            secret = draw(st.text(max_size=40))
        else:
            secret = draw(
                st.sampled_from([jwks_text, json.dumps(json.loads(jwks_text)["keys"][0]), _public_pem(saleor)])
            )
        header = _b64(json.dumps({"alg": "HS256", "kid": saleor.kid, "typ": "JWT"}).encode())
        payload = _b64(json.dumps(claims).encode())
        mac = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
        token = f"{header}.{payload}.{_b64(mac)}"
    elif kind == "none":
        header = _b64(json.dumps({"alg": draw(st.sampled_from(["none", "None", "NONE"])), "kid": saleor.kid}).encode())
        token = f"{header}.{_b64(json.dumps(claims).encode())}." + draw(st.sampled_from(["", "x"]))
    elif kind == "other-key-same-kid":
        token = jwt.encode(claims, OTHER_KEY, algorithm="RS256", headers={"kid": saleor.kid})
    elif kind == "unknown-kid":
        token = jwt.encode(claims, OTHER_KEY, algorithm="RS256", headers={"kid": draw(st.text(max_size=43))})
    elif kind == "expired":
        token = saleor.mint_token(user_permissions=ADMIN, now=time.time() - draw(st.integers(301, 10**8)))
    elif kind == "no-exp":
        token = _signed({k: v for k, v in claims.items() if k != "exp"}, saleor)
    elif kind == "exp-not-a-number":
        exp = draw(st.sampled_from([str(claims["exp"]), None, [claims["exp"]], {"t": 1}, True]))
        token = _signed({**claims, "exp": exp}, saleor)
    elif kind == "other-app":
        app_id = draw(st.text(min_size=1, max_size=20).filter(lambda a: a != saleor.app_id))
        token = saleor.mint_token(user_permissions=ADMIN, app_id=app_id)
    elif kind == "no-manage-orders":
        others = ["MANAGE_APPS", "MANAGE_PRODUCTS", "HANDLE_PAYMENTS", "manage_orders", ""]
        permissions = draw(st.lists(st.sampled_from(others), max_size=3))
        token = saleor.mint_token(user_permissions=tuple(permissions), permissions=tuple(permissions))
    elif kind == "tampered":
        genuine = saleor.mint_token(user_permissions=ADMIN)
        parts = genuine.split(".")
        part = draw(st.integers(0, 2))
        index = draw(st.integers(0, len(parts[part]) - 3))  # not the last chars: they may only carry padding bits
        char = draw(st.sampled_from(B64).filter(lambda c: c != parts[part][index]))
        parts[part] = parts[part][:index] + char + parts[part][index + 1 :]
        token = ".".join(parts)
    elif kind == "truncated":
        genuine = saleor.mint_token(user_permissions=ADMIN)
        token = genuine[: draw(st.integers(1, len(genuine) - 3))]
    elif kind == "other-saleor":  # a genuine token of another Saleor, claiming our app
        token = other_saleor.mint_token(user_permissions=ADMIN, app_id=saleor.app_id)
    else:
        token = jwt.encode(claims, saleor._private_key, algorithm="RS512", headers={"kid": saleor.kid})
    return kind, token


def _signed(claims: dict[str, Any], saleor: FakeSaleor) -> str:
    header = _b64(json.dumps({"alg": "RS256", "kid": saleor.kid, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = saleor._private_key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{_b64(signature)}"


def _public_pem(saleor: FakeSaleor) -> str:
    return (
        saleor._private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _seed_exception(world: World) -> None:
    """An open process exception, so that retry/dismiss have something real to refuse to touch."""
    with world.shop.services.db.transaction() as session:
        session.add(ProcessException(saleor_api_url=world.shop.saleor.api_url, order_id="T3JkZXI6MQ==",
                                     error_code="CAPTURE_NOT_ALLOWED", message="Klarna: capture failed"))  # fmt: skip


@pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_dashboard_api_refuses_every_token_it_must_not_trust(world: World, record_property: Any) -> None:
    app, saleor = world.shop.app, world.shop.saleor
    found = routes(app)
    assert found, "no dashboard API routes"
    _seed_exception(world)
    other_saleor = FakeSaleor()
    jwks_text = json.dumps(saleor.jwks)
    before = world.snapshot()

    @FUZZ
    @given(data=st.data())
    def refused(data: st.DataObject) -> None:
        route = data.draw(st.sampled_from(found))
        url, _ = data.draw(urls(app, route))
        kind, token = data.draw(refused_tokens(saleor, other_saleor, jwks_text))
        headers = {"authorization-bearer": token, "saleor-api-url": saleor.api_url}
        variant = data.draw(
            st.sampled_from(["as-is"] * 6 + ["no-token", "no-api-url", "other-api-url", "authorization-only"])
        )
        if variant == "no-token":
            headers.pop("authorization-bearer")
        elif variant == "no-api-url":
            headers.pop("saleor-api-url")
        elif variant == "other-api-url":
            headers["saleor-api-url"] = data.draw(
                st.sampled_from([saleor.api_url.rstrip("/"), "http://127.0.0.1:9/graphql/", " "])
            )
        elif variant == "authorization-only":  # a genuine token, in the header the app does not read
            headers = {
                "Authorization": f"Bearer {saleor.mint_token(user_permissions=ADMIN)}",
                "saleor-api-url": saleor.api_url,
            }
        body = data.draw(st.none() | json_values)
        world.tried[kind if variant == "as-is" else variant] += 1
        response = world.client.open(url, method=route[0], headers=headers, json=body)
        assert 400 <= response.status_code < 500, (
            route,
            url,
            kind,
            variant,
            response.status_code,
            response.get_data()[:300],
        )
        assert world.snapshot() == before, f"{route[0]} {url} with a {kind} token changed the database"
        assert world.klarna_calls() == 0, f"{route[0]} {url} with a {kind} token called Klarna"

    refused()
    report(world, record_property, f"dashboard refusals over {len(found)} routes")


@pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_dashboard_api_never_fails_an_admin_with_a_5xx(world: World, record_property: Any) -> None:
    app, saleor = world.shop.app, world.shop.saleor
    found = routes(app)
    _seed_exception(world)
    token = saleor.mint_token(user_permissions=ADMIN, ttl=3600)
    headers = {"authorization-bearer": token, "saleor-api-url": saleor.api_url}
    settings_bodies = st.fixed_dictionaries(
        {},
        optional={
            "region": st.sampled_from(["EU", "NA", "OC", "eu", "XX", ""]) | json_values,
            "environment": st.sampled_from(["live", "playground", "x"]) | json_values,
            "username": st.text(max_size=300) | json_values,
            "password": st.text(max_size=300) | json_values,
            "mapping": st.dictionaries(st.sampled_from(["FULFILLED", "CANCELED", "RETURNED", "x"]) | st.text(max_size=10),
                                       st.sampled_from(["capture", "cancel", "refund", "none"]) | json_values, max_size=4)
            | json_values,
            "options": st.dictionaries(st.text(max_size=30), json_values, max_size=4) | json_values,
            "channel": st.text(max_size=30) | json_values,
        },
    )  # fmt: skip

    @FUZZ
    @given(data=st.data())
    def admin(data: st.DataObject) -> None:
        route = data.draw(st.sampled_from(found))
        url, _values = data.draw(urls(app, route))
        body = data.draw(st.none() | json_values | settings_bodies)
        world.tried[route[1].rsplit(".", 1)[-1]] += 1
        before = world.snapshot()
        response = world.client.open(url, method=route[0], headers=headers, json=body)
        assert response.status_code < 500, (route, url, body, response.status_code, response.get_data()[:500])
        if response.status_code >= 400:
            assert world.snapshot() == before, f"a refused {route[0]} {url} changed the database"

    admin()
    report(world, record_property, f"dashboard admin calls over {len(found)} routes")
