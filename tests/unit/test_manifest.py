from functools import lru_cache
from pathlib import Path

import graphql
import pytest

from webhooks import ORDER_EVENTS, build_manifest, static_manifest

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "plugin" / "testing" / "data" / "saleor-schema.graphql"


@lru_cache(maxsize=1)
def saleor_schema() -> graphql.GraphQLSchema:
    return graphql.build_schema(SCHEMA_FILE.read_text())


@pytest.mark.parametrize("webhook", static_manifest()["webhooks"], ids=lambda w: w["name"])
def test_every_subscription_validates_against_saleor_3_23(webhook: dict) -> None:  # type: ignore[type-arg]  # a webhook entry of the manifest (JSON)
    document = graphql.parse(webhook["query"])
    assert graphql.validate(saleor_schema(), document) == []
    operations = [d for d in document.definitions if isinstance(d, graphql.OperationDefinitionNode)]
    assert [op.operation for op in operations] == [graphql.OperationType.SUBSCRIPTION]
    assert [f.name.value for f in operations[0].selection_set.selections] == ["event"]


def test_every_async_event_is_a_saleor_event_with_a_handler_and_a_branch() -> None:
    enum = saleor_schema().get_type("WebhookEventTypeAsyncEnum")
    order_hook, deleted_hook = static_manifest()["webhooks"][:2]
    assert set(order_hook["asyncEvents"]) <= set(enum.values)  # type: ignore[union-attr]  # the schema names an enum type here
    assert set(order_hook["asyncEvents"]) == set(ORDER_EVENTS)
    for event in order_hook["asyncEvents"]:
        typename = "".join(part.capitalize() for part in event.split("_"))
        assert f"on {typename} " in order_hook["query"], event
    assert deleted_hook["asyncEvents"] == ["APP_DELETED"]


def test_the_payment_buttons_are_sync_events_with_one_branch_each() -> None:
    hook = static_manifest()["webhooks"][2]
    enum = saleor_schema().get_type("WebhookEventTypeSyncEnum")
    assert hook["syncEvents"] == [
        "TRANSACTION_CHARGE_REQUESTED", "TRANSACTION_REFUND_REQUESTED", "TRANSACTION_CANCELATION_REQUESTED",
    ]  # fmt: skip
    assert set(hook["syncEvents"]) <= set(enum.values)  # type: ignore[union-attr]  # the schema names an enum type here
    for typename in ("TransactionChargeRequested", "TransactionRefundRequested", "TransactionCancelationRequested"):
        assert f"on {typename} " in hook["query"]
    assert "HANDLE_PAYMENTS" in static_manifest()["permissions"]


def test_urls_resolve_against_the_public_url() -> None:
    manifest = build_manifest("https://om.example.com", "3.23")
    assert manifest["appUrl"] == "https://om.example.com/app"
    assert manifest["tokenTargetUrl"] == "https://om.example.com/api/register"
    assert manifest["brand"]["logo"]["default"] == "https://om.example.com/logo.png"
    assert {w["targetUrl"] for w in manifest["webhooks"]} == {
        "https://om.example.com/api/webhooks/order-events",
        "https://om.example.com/api/webhooks/app-deleted",
        "https://om.example.com/api/webhooks/transaction-actions",
    }
    assert manifest["permissions"] == ["MANAGE_ORDERS", "HANDLE_PAYMENTS"]
    assert all(e["url"].startswith("https://om.example.com/") for e in manifest["extensions"])
    assert set(manifest["extensions"][0]["permissions"]) <= set(manifest["permissions"])


def test_old_saleor_gets_a_popup_instead_of_the_widget_mount() -> None:
    assert build_manifest("https://x", "3.23")["extensions"][0]["mount"] == "ORDER_DETAILS_WIDGETS"
    old = build_manifest("https://x", "3.21")["extensions"][0]
    assert (old["mount"], old["target"], "options" in old) == ("ORDER_DETAILS_MORE_ACTIONS", "POPUP", False)


def test_logo_is_a_square_png_of_at_least_256_px(client) -> None:  # type: ignore[no-untyped-def]  # client is a pytest fixture (Flask test client)
    response = client.get("/logo.png")
    data = response.data
    assert response.mimetype == "image/png" and data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == height >= 256


def test_manifest_endpoint(client) -> None:  # type: ignore[no-untyped-def]  # client is a pytest fixture (Flask test client)
    response = client.get("/api/manifest", headers={"Saleor-Schema-Version": "3.23", "User-Agent": "Saleor/3.23"})
    assert response.status_code == 200
    body = response.get_json()
    for field in (
        "id",
        "name",
        "version",
        "about",
        "author",
        "permissions",
        "appUrl",
        "tokenTargetUrl",
        "homepageUrl",
        "supportUrl",
        "dataPrivacyUrl",
        "requiredSaleorVersion",
        "extensions",
        "webhooks",
    ):
        assert body[field], field
    assert body["appUrl"] == "http://127.0.0.1:5056/app"
