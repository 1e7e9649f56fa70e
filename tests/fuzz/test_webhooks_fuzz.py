"""Issue 5, part 3: the signed webhook endpoints under random and mutated input.

Forged input (a body and a signature that Saleor did not produce together) must be refused with a
4xx and leave nothing behind. Genuine input with odd headers, and bodies validly signed by
Saleor's key but not what our subscription produces, may be accepted or refused, but never with a
5xx, and when refused they too leave nothing behind. Nothing in a webhook request calls Klarna.

One 5xx is by design: a signature whose ``kid`` is not in the stored JWKS, while the JWKS was
refetched less than five seconds ago, gets 503 ``JWKS_REFRESH_PENDING`` so that Saleor redelivers
after a key rotation instead of dropping the event (plugin/services/installations.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from plugin.testing.saleor import Delivery, b64url
from tests.fuzz.conftest import FUZZ, World, error_type, report

ORDER_EVENTS = "/api/webhooks/order-events"
APP_DELETED = "/api/webhooks/app-deleted"
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def _header_b64(signature: str) -> str:
    return signature.split(".")[0]


def _header(signature: str) -> dict[str, Any]:
    raw = _header_b64(signature)
    return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))


def _encode_header(header: Any) -> str:
    return b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())


def _rs256(key: rsa.RSAPrivateKey, signing_input: bytes) -> str:
    return b64url(key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))


def _signature_over(key: rsa.RSAPrivateKey, header: dict[str, Any], body: bytes) -> str:
    header_b64 = _encode_header(header)
    return f"{header_b64}..{_rs256(key, header_b64.encode() + b'.' + body)}"


def _post(world: World, path: str, headers: dict[str, str], body: bytes) -> Any:
    return world.client.post(path, data=body, headers=headers)


def _kid_unknown(signature: str, known_kid: str) -> bool:
    """Whether the signature names (in an otherwise well-formed header) a kid the JWKS lacks."""
    try:
        header = _header(signature)
    except (ValueError, UnicodeDecodeError, TypeError):
        return False
    return isinstance(header, dict) and header.get("kid") != known_kid


def _check(world: World, response: Any, before: dict[str, list[str]], *, forged: bool, signature: str = "") -> None:
    status = response.status_code
    if status == 503 and error_type(response) == "JWKS_REFRESH_PENDING":
        # by design, and only for a kid the stored JWKS does not have (a key rotation, or a forgery)
        assert _kid_unknown(signature, world.shop.saleor.kid), (signature, response.get_data())
    else:
        assert status < 500, (status, response.get_data()[:300])
    if forged:
        assert not 200 <= status < 300, (status, response.get_data()[:300])
    if not 200 <= status < 300:
        assert world.snapshot() == before, "a refused webhook changed the database"
    assert world.klarna_calls() == 0, "a webhook request called Klarna"


# -- mutations of genuine deliveries --------------------------------------------------------------


@st.composite
def mutated_bodies(draw: st.DrawFn, original: bytes) -> bytes:
    """A body other than ``original``: byte flips, cuts, insertions, or a JSON-level change."""
    kind = draw(
        st.sampled_from(["flip", "truncate", "insert", "delete", "json", "reformat", "random", "empty-ish", "huge"])
    )
    body = original
    if kind == "flip":
        index = draw(st.integers(0, len(body) - 1))
        body = body[:index] + bytes([body[index] ^ draw(st.integers(1, 255))]) + body[index + 1 :]
    elif kind == "truncate":
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif kind == "insert":
        index = draw(st.integers(0, len(body)))
        body = body[:index] + draw(st.binary(min_size=1, max_size=20)) + body[index:]
    elif kind == "delete":
        start = draw(st.integers(0, len(body) - 1))
        body = body[:start] + body[start + draw(st.integers(1, 20)) :]
    elif kind == "json":
        data = json.loads(original)
        key = draw(st.sampled_from(sorted(data)))
        data[key] = draw(json_values)
        body = json.dumps(data).encode()
    elif kind == "reformat":  # the same JSON, other bytes: the signature is over bytes
        body = json.dumps(json.loads(original), separators=(",", ":"), ensure_ascii=draw(st.booleans())).encode()
    elif kind == "random":
        body = draw(st.binary(max_size=300))
    elif kind == "huge":  # over the 1 MiB request limit
        body = original + b" " * (1024 * 1024)
    else:
        body = draw(st.sampled_from([b" ", b"{}", b"null", b"[]", b"\x00", original + b" "]))
    return body


@st.composite
def forged_signatures(draw: st.DrawFn, genuine: str, body: bytes, saleor_key: rsa.RSAPrivateKey, jwks_text: str) -> str:
    """A signature Saleor did not make for ``body``.

    ``saleor_key`` signs the variants only Saleor itself could make (b64=true, no crit): the app
    must refuse them because Saleor never sends them, not because they do not verify."""
    header = _header(genuine)
    kind = draw(st.sampled_from([
        "truncate", "flip", "drop-part", "extra-part", "wrong-kid", "no-kid", "alg-none", "alg-hs256", "alg-rs512",
        "b64-true", "b64-true-raw", "no-crit", "other-key", "header-not-json", "header-not-object", "random",
    ]))  # fmt: skip
    if kind == "truncate":
        signature = genuine[: draw(st.integers(0, len(genuine) - 1))]
    elif kind == "flip":
        index = draw(st.integers(0, len(genuine) - 1))
        replacement = draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "))
        signature = genuine[:index] + replacement + genuine[index + 1 :]
    elif kind == "drop-part":
        signature = draw(
            st.sampled_from([genuine.replace("..", "."), genuine.split("..")[0] + "..", ".." + genuine.split("..")[1]])
        )
    elif kind == "extra-part":
        signature = genuine.replace("..", "." + draw(st.sampled_from(["e30", "x", b64url(body[:30])])) + ".")
    elif kind == "wrong-kid":
        kid = draw(st.text(min_size=1, max_size=43).filter(lambda k: k != header["kid"]))
        signature = _encode_header({**header, "kid": kid}) + ".." + genuine.split("..")[1]
    elif kind == "no-kid":
        signature = _encode_header({k: v for k, v in header.items() if k != "kid"}) + ".." + genuine.split("..")[1]
    elif kind == "alg-none":
        head = _encode_header({**header, "alg": "none"})
        signature = head + ".." + draw(st.sampled_from(["", genuine.split("..")[1]]))
    elif kind == "alg-hs256":  # the classic confusion: HMAC keyed with the public key
        secret = draw(st.sampled_from([jwks_text, json.dumps(json.loads(jwks_text)["keys"][0]), "", header["kid"]]))
        head = _encode_header({**header, "alg": "HS256"})
        mac = hmac.new(secret.encode(), head.encode() + b"." + body, hashlib.sha256).digest()
        signature = f"{head}..{b64url(mac)}"
    elif kind == "alg-rs512":
        signature = _encode_header({**header, "alg": "RS512"}) + ".." + genuine.split("..")[1]
    elif kind == "b64-true":  # RFC 7515 encoding, signed with Saleor's own key: still not what Saleor sends
        head = _encode_header({**header, "b64": True})
        signing_input = head.encode() + b"." + b64url(body).encode()
        signature = f"{head}..{_rs256(saleor_key, signing_input)}"
    elif kind == "b64-true-raw":
        signature = _signature_over(saleor_key, {**header, "b64": True}, body)
    elif kind == "no-crit":
        signature = _signature_over(saleor_key, {k: v for k, v in header.items() if k != "crit"}, body)
    elif kind == "other-key":  # same kid, another private key
        signature = _signature_over(OTHER_KEY, header, body)
    elif kind == "header-not-json":
        signature = b64url(draw(st.binary(max_size=40))) + ".." + genuine.split("..")[1]
    elif kind == "header-not-object":
        signature = _encode_header(draw(st.sampled_from([[], "RS256", 1, None]))) + ".." + genuine.split("..")[1]
    else:
        signature = draw(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=400))
    return signature


def _target(delivery: Delivery) -> str:
    return APP_DELETED if delivery.event == "APP_DELETED" else ORDER_EVENTS


def _app_deleted(world: World) -> Delivery:
    """A genuine APP_DELETED delivery (as Saleor 3.23 sends it), without uninstalling the fake."""
    saleor = world.shop.saleor
    body = json.dumps({"app": {"id": saleor.app_id}}).encode()
    signature = saleor.sign(body)
    base = next(iter(world.deliveries)).headers
    headers = {**base, "Saleor-Event": "app_deleted", "X-Saleor-Event": "app_deleted", "Saleor-Signature": signature,
               "X-Saleor-Signature": signature}  # fmt: skip
    return Delivery("APP_DELETED", APP_DELETED, headers, body)


# -- the properties ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_forged_webhooks_are_refused_and_leave_nothing(world: World, record_property: Any) -> None:
    saleor = world.shop.saleor
    key, jwks_text = saleor._private_key, json.dumps(saleor.jwks)  # the fake's key: only for Saleor-made variants
    genuine = [*world.deliveries, _app_deleted(world)]
    before = world.snapshot()

    @FUZZ
    @given(data=st.data())
    def forged(data: st.DataObject) -> None:
        delivery = data.draw(st.sampled_from(genuine))
        signature = delivery.headers["Saleor-Signature"]
        how = data.draw(st.sampled_from(["body", "signature", "both", "swap"]))
        body = delivery.body
        if how in ("body", "both"):
            body = data.draw(mutated_bodies(delivery.body))
        if how in ("signature", "both"):
            signature = data.draw(forged_signatures(signature, body, key, jwks_text))
        if how == "swap":  # a genuine signature, over another genuine body
            other = data.draw(st.sampled_from([d for d in genuine if d.body != delivery.body]))
            body = other.body
        if body == delivery.body and signature == delivery.headers["Saleor-Signature"]:
            return  # the mutation happened to change nothing
        world.tried[how] += 1
        headers = {**delivery.headers, "Saleor-Signature": signature, "X-Saleor-Signature": signature}
        response = _post(world, _target(delivery), headers, body)
        _check(world, response, before, forged=True, signature=signature)

    forged()
    report(world, record_property, "forged webhooks")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_webhooks_with_broken_headers_are_refused_and_leave_nothing(world: World, record_property: Any) -> None:
    genuine = world.deliveries
    before = world.snapshot()
    printable = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=80)

    @FUZZ
    @given(data=st.data())
    def broken(data: st.DataObject) -> None:
        delivery = data.draw(st.sampled_from(genuine))
        headers = dict(delivery.headers)
        saleor_api_url = headers["Saleor-Api-Url"]
        how = data.draw(st.sampled_from(["drop", "api-url", "event", "method", "path", "legacy-only"]))
        path, method = ORDER_EVENTS, "POST"
        if how == "drop":
            dropped = data.draw(st.sampled_from(["Saleor-Api-Url", "Saleor-Event", "Saleor-Signature"]))
            headers.pop(dropped)
        elif how == "api-url":  # another Saleor, or this one spelled differently: not installed
            headers["Saleor-Api-Url"] = data.draw(
                st.sampled_from([saleor_api_url.rstrip("/"), saleor_api_url.upper(), saleor_api_url + "x",
                                 saleor_api_url.replace("127.0.0.1", "localhost"), " ", "http://127.0.0.1:9/graphql/"])
                | printable.filter(lambda u: u.strip() != saleor_api_url)
            )  # fmt: skip
        elif how == "event":  # not an order event we subscribe to (the event header is not signed, only the body)
            headers["Saleor-Event"] = data.draw(
                st.sampled_from(["app_deleted", "checkout_created", "ORDER", "*", "order_updated_"])
                | printable.filter(lambda e: bool(e.strip()) and e.strip().upper() not in _subscribed())
            )  # fmt: skip
        elif how == "method":
            method = data.draw(st.sampled_from(["GET", "PUT", "PATCH", "DELETE"]))
        elif how == "path":
            path = data.draw(
                st.sampled_from(
                    [ORDER_EVENTS + "/", ORDER_EVENTS + "x", "/api/webhooks/", "/api/webhooks/order_events"]
                )
            )
        else:  # only the X- headers (deprecated names), no Saleor-* ones
            for name in ("Saleor-Event", "Saleor-Signature", "Saleor-Domain"):
                headers.pop(name)
        world.tried[how] += 1
        response = world.client.open(path, method=method, headers=headers, data=delivery.body)
        _check(world, response, before, forged=True)

    broken()
    report(world, record_property, "webhooks with broken headers")


def _subscribed() -> set[str]:
    from webhooks import ORDER_EVENTS as EVENTS

    return set(EVENTS)


@pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_bodies_signed_by_saleor_but_not_ours_never_fail_the_server(world: World, record_property: Any) -> None:
    """Validly signed garbage: whatever happens, no 5xx, no Klarna call, and nothing stored when refused."""
    saleor = world.shop.saleor
    app_id = saleor.app_id
    genuine = world.deliveries

    def shaped(order: Any, recipient: Any, principal: Any) -> dict[str, Any]:
        return {"__typename": "OrderUpdated", "issuingPrincipal": principal, "recipient": recipient, "order": order}

    ids = st.one_of(st.text(max_size=40), st.integers(), st.none(), st.just(""), st.text(min_size=300, max_size=400))
    event_bodies = st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.builds(shaped, st.fixed_dictionaries({"id": ids}) | json_values,
                  st.fixed_dictionaries({"id": st.just(app_id) | ids}) | json_values,
                  st.fixed_dictionaries({"id": st.just(app_id) | ids}) | json_values).map(lambda d: json.dumps(d).encode()),
        st.builds(lambda inner: json.dumps({"data": {"orderUpdated": inner}}).encode(), json_values),
        st.binary(min_size=1, max_size=200),
        st.builds(lambda v: json.dumps({"app": v}).encode(), st.fixed_dictionaries({"id": ids}) | json_values),
    )  # fmt: skip

    @FUZZ
    @given(body=event_bodies, path=st.sampled_from([ORDER_EVENTS, APP_DELETED]),
           event=st.sampled_from(["order_updated", "order_fully_paid", "fulfillment_created", "app_deleted"]))  # fmt: skip
    def signed(body: bytes, path: str, event: str) -> None:
        if path == APP_DELETED and json.loads(json.dumps({"app": {"id": app_id}})) == _try_json(body):
            return  # that one is a genuine uninstall
        world.tried[path.rsplit("/", 1)[1]] += 1
        before = world.snapshot()
        signature = saleor.sign(body)
        headers = {**genuine[0].headers, "Saleor-Event": event, "Saleor-Signature": signature}
        response = _post(world, path, headers, body)
        _check(world, response, before, forged=False)

    signed()
    report(world, record_property, "validly signed bodies")


def _try_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_genuine_input_the_fuzzers_mutate_is_accepted(world: World) -> None:
    """The baseline: genuine deliveries are accepted, so every refusal above is the mutation's doing."""
    for delivery in world.deliveries:
        response = _post(world, _target(delivery), delivery.headers, delivery.body)
        assert response.status_code == 200, response.get_data()
    assert world.klarna_calls() == 0
