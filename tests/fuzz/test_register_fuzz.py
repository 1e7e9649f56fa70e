"""Issue 5, part 3: the install handshake (/api/register) under random and mutated input.

Without the token Saleor just issued, nothing may be installed: every request is refused with a
4xx (never a 5xx), no table changes, Klarna is never called. The Saleor API URLs tried are the
fake's own (with anything but its token), variants of it, unreachable loopback ports and strings
that are not URLs at all, so the fuzzer never resolves a host name or leaves the machine.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import FUZZ, World, report

REGISTER = "/api/register"
printable = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=10,
)


@pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_register_installs_nothing_without_the_token_saleor_issued(world: World, record_property: Any) -> None:
    saleor = world.shop.saleor
    token = saleor.app_token
    assert token is not None
    before = world.snapshot()
    api_urls = st.sampled_from([
        saleor.api_url, saleor.api_url, saleor.api_url.rstrip("/"), saleor.api_url + "x/", saleor.api_url.upper(),
        f"http://127.0.0.1:{saleor.port}/.well-known/jwks.json", "http://127.0.0.1:9/graphql/", "http://127.0.0.1:0/",
        "ftp://127.0.0.1/graphql/", "file:///etc/passwd", "javascript:alert(1)", "http://[::1", "graphql", " ",
        # issue 11: userinfo, parser confusion, private and metadata addresses (refused before any dial)
        f"http://attacker:pw@127.0.0.1:{saleor.port}/graphql/", f"http://127.0.0.1:{saleor.port}\\@evil.example/",
        f"http://127.0.0.1:{saleor.port}/graphql/?x=1", f"http://127.0.0.1:{saleor.port}/graphql/#f",
        "http://10.0.0.1/graphql/", "http://169.254.169.254/latest/meta-data/", "http://[fd00::1]/graphql/",
        "http://0.0.0.0:9/graphql/", "HTTP://127.0.0.1:9/graphql/", "http://127.0.0.1:99999/graphql/",
    ]) | printable.filter(lambda u: "://" not in u)  # fmt: skip
    forged_tokens = st.one_of(
        st.text(max_size=60),
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=30, max_size=30),
        st.sampled_from([token[:-1], token + "x", token[1:], token[::-1], f"Bearer {token}x", token[:29] + "!"]),
    ).filter(lambda t: t.strip() != token)
    bodies = st.one_of(
        st.builds(lambda t: json.dumps({"auth_token": t}).encode(), forged_tokens),
        st.builds(lambda t, extra: json.dumps({**extra, "auth_token": t}).encode(), forged_tokens,
                  st.dictionaries(st.text(max_size=10), json_values, max_size=3)),
        st.builds(lambda v: json.dumps({"auth_token": v}).encode(), json_values),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.just(b""),
    )  # fmt: skip
    content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                     "application/x-www-form-urlencoded", None])  # fmt: skip

    @FUZZ
    @given(api_url=api_urls, body=bodies, content_type=content_types,
           method=st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE"]), drop_api_url=st.booleans())  # fmt: skip
    def register(api_url: str, body: bytes, content_type: str | None, method: str, drop_api_url: bool) -> None:
        world.tried[method if method != "POST" else ("no-api-url" if drop_api_url else "post")] += 1
        headers = {
            "Saleor-Domain": f"127.0.0.1:{saleor.port}",
            "Saleor-Schema-Version": "3.23",
            "User-Agent": "Saleor/3.23",
        }
        if not drop_api_url:
            headers["Saleor-Api-Url"] = api_url
        if content_type:
            headers["Content-Type"] = content_type
        response = world.client.open(REGISTER, method=method, headers=headers, data=body)
        assert 400 <= response.status_code < 500, (response.status_code, response.get_data()[:300])
        assert world.snapshot() == before, "a refused registration changed the database"
        assert world.klarna_calls() == 0

    register()
    report(world, record_property, "register")
