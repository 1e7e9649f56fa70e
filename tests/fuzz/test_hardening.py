"""Issue 11, items 2-7 (and issue 12's allowlist normalization): each attack from the security
review, kept as a regression test. Each shows the attack refused and nothing changed: every table
as it was (``World.snapshot``), no Klarna call, and where the attack aimed at an outgoing call, no
request reaching the target.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from plugin.db import Database
from plugin.db.models import ChannelSettings, Delivery, Installation, Job, Operation, utcnow
from plugin.logs import JsonFormatter
from plugin.settings import Settings
from plugin.testing.loopback import LoopbackServer
from plugin.testing.saleor import Delivery as SaleorDelivery
from tests.functional.shop import Shop
from tests.fuzz.conftest import FUZZ, World, error_type
from tests.fuzz.test_no_secrets_in_logs import Capture, captured  # noqa: F401 - captured is a pytest fixture

REGISTER = "/api/register"
API = "/api/dashboard"
ADMIN = ("MANAGE_ORDERS", "MANAGE_APPS")
BOTH = pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


def _register(client: Any, api_url: str, token: str, remote: str = "203.0.113.7") -> Any:
    return client.post(
        REGISTER, json={"auth_token": token}, environ_base={"REMOTE_ADDR": remote},
        headers={"Saleor-Api-Url": api_url, "Saleor-Schema-Version": "3.23"},
    )  # fmt: skip


def _post(client: Any, delivery: SaleorDelivery, signature: str | None = None) -> Any:
    headers = dict(delivery.headers)
    if signature is not None:
        headers["Saleor-Signature"] = signature
    return client.post(delivery.target_url.split("5056", 1)[-1], data=delivery.body, headers=headers)


def _count(world: World, model: Any) -> int:
    with world.shop.services.db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _with_history(world: World) -> None:
    """The merchant's state a takeover would destroy: settings (installed), deliveries, jobs, a ledger."""
    for delivery in world.deliveries:
        assert _post(world.client, delivery).status_code == 200
    world.shop.sync()
    assert _count(world, Operation) >= 1 and _count(world, Job) >= 1 and _count(world, ChannelSettings) >= 1


# -- item 2: another app's token cannot take over the installation --------------------------------


@BOTH
def test_another_apps_token_cannot_replace_the_installation(world: World) -> None:
    _with_history(world)
    saleor, client = world.shop.saleor, world.client
    other_id, other_token = saleor.install_other_app()
    before, klarna_calls = world.snapshot(), world.klarna_calls()
    # when the other app's token is presented for the same Saleor
    response = _register(client, saleor.api_url, other_token)
    # then it is refused, and nothing changed
    assert response.status_code == 409, response.get_data()
    assert error_type(response) == "ALREADY_INSTALLED"
    assert world.snapshot() == before
    assert world.klarna_calls() == klarna_calls
    # the merchant's dashboard still works, the other app's dashboard tokens do not
    merchant = {"authorization-bearer": saleor.mint_token(user_permissions=ADMIN), "saleor-api-url": saleor.api_url}
    assert client.get(f"{API}/settings", headers=merchant).status_code == 200
    stranger = {"authorization-bearer": saleor.mint_token(user_permissions=ADMIN, app_id=other_id),
                "saleor-api-url": saleor.api_url}  # fmt: skip
    assert client.get(f"{API}/settings", headers=stranger).status_code in (401, 403)
    # and Saleor's genuine webhooks are still accepted
    world.shop.order()
    assert saleor.outbox and all(_post(client, d).status_code == 200 for d in saleor.outbox)


@BOTH
def test_a_reinstall_after_saleor_revoked_the_token_keeps_settings_jobs_and_ledger(world: World) -> None:
    _with_history(world)
    saleor = world.shop.saleor
    kept = {model: _count(world, model) for model in (ChannelSettings, Job, Operation, Delivery)}
    old_app = saleor.app_id
    # when Saleor deletes the app (its APP_DELETED never arrives) and the app is installed again
    saleor.uninstall()
    saleor.outbox.clear()
    result = saleor.install(f"{world.shop.settings.public_base}/api/manifest")
    # then the new installation replaces the old one in place: nothing of the merchant's is lost
    assert result.ok, result
    with world.shop.services.db.transaction() as session:
        [row] = session.scalars(select(Installation)).all()
        assert row.app_id == saleor.app_id != old_app
    assert {model: _count(world, model) for model in kept} == kept


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_same_app_may_present_a_new_token(world: World) -> None:
    saleor = world.shop.saleor
    assert saleor.app_token is not None
    response = _register(world.client, saleor.api_url, saleor.app_token)
    assert response.status_code == 200, response.get_data()
    assert _count(world, ChannelSettings) == 1


# -- item 3: no server-side requests where the app should not call ---------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_register_cannot_reach_loopback_without_the_development_setting(settings: Settings) -> None:
    shop = Shop(replace(settings, saleor_allow_loopback=False))
    try:
        saleor = shop.saleor
        # Saleor's own install handshake, and a hand-made register naming the fake by host name
        result = saleor.install(f"{shop.settings.public_base}/api/manifest")
        assert not result.ok and result.status == 401, result
        response = _register(shop.app.test_client(), f"http://localhost:{saleor.port}/graphql/", "x" * 30)
        assert response.status_code == 401
        assert saleor.graphql_requests == []  # refused at connect time: nothing reached the address
        with shop.services.db.transaction() as session:
            assert session.scalars(select(Installation)).all() == []
    finally:
        shop.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_userinfo_in_the_saleor_url_is_stripped(world: World) -> None:
    saleor = world.shop.saleor
    assert saleor.app_token is not None
    before = len(saleor.graphql_requests)
    with_userinfo = saleor.api_url.replace("http://", "http://attacker:chosen-password@")
    response = _register(world.client, with_userinfo, saleor.app_token)
    # the app called Saleor with the bearer token alone (a Basic credential from the URL would have
    # replaced it, and the fake would not have known the caller), and stored the URL without userinfo
    assert response.status_code == 200, response.get_data()
    assert [r["caller"] for r in saleor.graphql_requests[before:]] == ["app"]
    with world.shop.services.db.transaction() as session:
        assert [row.saleor_api_url for row in session.scalars(select(Installation))] == [saleor.api_url]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_allowlist_pattern_matches_the_host_not_the_raw_string(settings: Settings) -> None:
    shop = Shop(replace(settings, allowed_saleor_urls=(r"re:http://.*\.example\.com(:[0-9]+)?/graphql/",)))
    try:
        saleor, client = shop.saleor, shop.app.test_client()
        # before: ".*" swallowed "127.0.0.1:<port>/" and the app called the fake
        sneaky = f"http://127.0.0.1:{saleor.port}/.example.com/graphql/"
        response = _register(client, sneaky, "x" * 30)
        assert response.status_code == 403 and error_type(response) == "SALEOR_URL_PROHIBITED"
        assert saleor.graphql_requests == []
    finally:
        shop.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_allowlist_variants_of_an_allowed_url_are_the_same_url(settings: Settings) -> None:
    # issue 12, item 4: "…/graphql" on the list admits Saleor's "…/graphql/" (host case: test_settings)
    shop = Shop(settings)
    try:
        entry = shop.saleor.api_url.rstrip("/").replace("http://", "HTTP://")
        shop.services.settings = replace(shop.services.settings, allowed_saleor_urls=(entry,))
        result = shop.saleor.install(f"{shop.settings.public_base}/api/manifest")
        assert result.ok, result
    finally:
        shop.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_allowlist_pattern_admits_only_its_hosts(settings: Settings) -> None:
    allow = replace(settings, allowed_saleor_urls=(r"re:https://[a-z0-9-]+\.saleor\.cloud/graphql/",))
    hosts = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=20)
    junk = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30)

    @FUZZ
    @given(host=hosts, before=junk, after=junk)
    def check(host: str, before: str, after: str) -> None:
        url = f"https://{before}{host}{after}/graphql/"
        if allow.saleor_url_allowed(url):
            from plugin.saleor.urls import parse

            assert parse(url).host.endswith(".saleor.cloud"), url

    check()


# -- item 4: bounded outgoing calls, rate, JWKS size, installations per host -----------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_register_is_rate_limited(settings: Settings) -> None:
    shop = Shop(replace(settings, register_per_minute=3))
    try:
        client, saleor = shop.app.test_client(), shop.saleor
        codes = [_register(client, saleor.api_url, f"forged-token-{i:017d}").status_code for i in range(6)]
        assert codes == [401, 401, 401, 429, 429, 429]
        assert len(saleor.graphql_requests) == 3  # the refused ones cost nothing
        assert _register(client, saleor.api_url, "x" * 30, remote="198.51.100.1").status_code == 401  # per source
    finally:
        shop.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_installations_per_host_are_bounded(settings: Settings) -> None:
    shop = Shop(replace(settings, max_installations_per_host=2))
    try:
        saleor = shop.saleor
        with shop.services.db.transaction() as session:
            for path in ("a", "b"):
                session.add(Installation(saleor_api_url=f"http://127.0.0.1:{saleor.port}/{path}/graphql/",
                                         app_id="QXBwOjk=", token_encrypted="x", jwks="{}"))  # fmt: skip
        response = _register(shop.app.test_client(), f"http://127.0.0.1:{saleor.port}/c/graphql/", "x" * 30)
        assert response.status_code == 403 and error_type(response) == "TOO_MANY_INSTALLATIONS"
        assert saleor.graphql_requests == []
    finally:
        shop.close()


def _evil_saleor(jwks_bytes: int) -> LoopbackServer:
    """Answers the app-id query for any token and serves a JWKS of ``jwks_bytes`` bytes."""
    key = {"kty": "RSA", "kid": "k", "n": "AQAB" * 64, "e": "AQAB"}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/.well-known/jwks.json":
            padding_keys = [{"kty": "oct", "k": "x" * 1000}] * (jwks_bytes // 1030)
            body = json.dumps({"keys": [key, *padding_keys]}).encode()
        else:
            body = json.dumps({"data": {"app": {"id": "QXBwOjQy"}}}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return LoopbackServer(app, "evil-saleor")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_huge_jwks_is_refused_and_nothing_is_stored(world: World) -> None:
    evil = _evil_saleor(5 * 1024 * 1024)
    try:
        before = world.snapshot()
        response = _register(world.client, f"http://127.0.0.1:{evil.port}/graphql/", "x" * 30)
        assert response.status_code == 401 and error_type(response) == "JWKS_NOT_AVAILABLE"
        assert world.snapshot() == before
    finally:
        evil.stop()


# -- item 5: a flood of forgeries cannot hold off a rotated key ------------------------------------


def _forge(body: bytes) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = {"alg": "RS256", "b64": False, "crit": ["b64"], "kid": "attacker-kid"}
    header_b64 = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    signature = key.sign(header_b64.encode() + b"." + body, padding.PKCS1v15(), hashes.SHA256())
    return f"{header_b64}..{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@BOTH
def test_forged_unknown_kids_cannot_hold_off_a_rotated_key(world: World) -> None:
    saleor, client = world.shop.saleor, world.client
    # given Saleor rotated its key, and an attacker floods the app with signatures of unknown kids
    saleor.rotate_key()
    world.shop.order()
    genuine = list(saleor.outbox)
    saleor.outbox.clear()
    flood = [_post(client, genuine[0], signature=_forge(genuine[0].body)).status_code for _ in range(15)]
    assert all(code in (401, 503) for code in flood), flood
    # then Saleor's genuine deliveries, signed with the new key, are accepted (not 503 until the flood ends)
    assert [_post(client, d).status_code for d in genuine] == [200] * len(genuine)


# -- item 7: replays, file modes, logs, /metrics ---------------------------------------------------


@BOTH
def test_a_replayed_delivery_is_answered_but_recorded_once(world: World) -> None:
    delivery = next(d for d in world.deliveries if d.event == "ORDER_CREATED")
    assert _post(world.client, delivery).status_code == 200
    world.shop.sync()
    before, calls = world.snapshot(), len(world.shop.saleor.graphql_requests)
    replies = [_post(world.client, delivery) for _ in range(50)]
    assert all(r.status_code == 200 and r.get_json()["duplicate"] for r in replies)
    world.shop.sync()
    assert world.snapshot() == before
    assert len(world.shop.saleor.graphql_requests) == calls  # no free load on Saleor either


def test_the_embedded_database_and_its_folder_are_owner_only(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    settings = Settings(instance_path=instance).validated()  # the embedded default: SQLite in the instance folder
    db = Database(settings.database_url)
    db.upgrade()
    db.dispose()
    assert stat.S_IMODE(os.stat(instance).st_mode) == 0o700
    for name in ("klarna-om.sqlite3", "secret_key"):
        assert stat.S_IMODE(os.stat(instance / name).st_mode) == 0o600, name
    wal = instance / "klarna-om.sqlite3-wal"
    assert not wal.exists() or stat.S_IMODE(os.stat(wal).st_mode) == 0o600


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_personal_data_in_logs_at_debug(settings: Settings, captured: Capture) -> None:  # noqa: F811 - fixture
    marker = "Jane-Roe-0048600123456"
    shop = Shop(replace(settings, log_level="DEBUG"))
    try:
        shop.install()
        order_id, _ = shop.order(user_email=f"{marker}@example.com")
        with shop.saleor._lock:
            shop.saleor._orders[order_id]["metadata"]["gift_message"] = f"For {marker}, Main St 1"
        staff = {"Authorization": f"Bearer {shop.saleor.mint_token()}"}
        note = {"query": "mutation($o: ID!, $m: String!) { orderNoteAdd(order: $o, input: {message: $m}) "
                         "{ errors { message } } }", "variables": {"o": order_id, "m": f"Call {marker} first"}}  # fmt: skip
        status, _ = shop.saleor.handle_graphql(json.dumps(note).encode(), staff)
        assert status == 200
        tee, shoe = shop.line_ids(order_id)
        shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
        shop.sync()
        assert shop.performed("captures") == 1
    finally:
        shop.close()
    leaks = [
        record.name
        for record in captured.records
        for text in (JsonFormatter().format(record), logging.Formatter("%(message)s").format(record))
        if marker in text
    ]
    assert not leaks, f"personal data logged by {sorted(set(leaks))}"
    assert any(record.name.startswith("plugin") for record in captured.records)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_metrics_need_the_token_when_one_is_set(settings: Settings) -> None:
    token = "metrics-token-0123456789abcdef"
    shop = Shop(replace(settings, metrics_token=token))
    try:
        client = shop.app.test_client()
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200 and b"klarna_om" in response.get_data()
    finally:
        shop.close()


def test_deliveries_older_than_retention_are_pruned_by_the_worker(services: Any) -> None:
    from datetime import timedelta

    from plugin.services import queue
    from plugin.worker import Worker

    now = utcnow()
    url = "https://shop.example.com/graphql/"
    with services.db.transaction() as session:
        session.add(Installation(saleor_api_url=url, app_id="QXBwOjE=", token_encrypted="x", jwks="{}"))
        session.flush()
        for days, order in ((40, "old"), (1, "new")):
            session.add(Delivery(saleor_api_url=url, event="ORDER_UPDATED", order_id=order,
                                 received_at=now - timedelta(days=days)))  # fmt: skip
        for order in ("old-done", "old-waiting", "new-done"):
            queue.enqueue(session, url, order, now=now - timedelta(days=40 if order.startswith("old") else 1))
        for order, days in (("old-done", 40), ("new-done", 1)):
            session.execute(
                Job.__table__.update()
                .where(Job.order_id == order)
                .values(done_seq=1, updated_at=now - timedelta(days=days))
            )
    worker = Worker(services.sync_deps(), retention_days=30, prune=services.prune)
    pruned = worker.housekeep(now=1e9)
    assert pruned is not None and (pruned.deliveries, pruned.jobs) == (1, 1)
    with services.db.transaction() as session:
        assert [d.order_id for d in session.scalars(select(Delivery))] == ["new"]
        assert sorted(j.order_id for j in session.scalars(select(Job))) == ["new-done", "old-waiting"]
    assert worker.housekeep(now=1e9 + 60) is None  # not again within the hour
