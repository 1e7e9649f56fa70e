"""The settings page and the order widget in headless Chromium, embedded like the Saleor dashboard embeds them.

The settings flow goes end to end: credentials and mapping typed into the page, saved, reloaded, then
signed webhooks from the FakeSaleor processed by the worker under the new mapping against the FakeKlarna.
Screenshots (light and dark) land in test-artifacts/screenshots/.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from plugin.db.models import Operation, ProcessException
from plugin.testing.saleor import gid
from plugin.worker import Worker
from tests.browser.conftest import Stack

pytestmark = pytest.mark.browser

ADMIN = ("MANAGE_ORDERS", "MANAGE_APPS")
TIMEOUT = 15_000  # ms


def _order(stack: Stack, *, tracking: str = "") -> tuple[str, str, str]:
    """A Klarna-paid order of 2 × 25.00 + 5.00 shipping: (Saleor order id, its line id, Klarna order id)."""
    klarna_id = stack.klarna.fake.create_order(order_amount=5500, currency="USD")
    order_id = stack.saleor.create_order(
        lines=[{"name": "Wool scarf", "sku": "SCARF-1", "quantity": 2, "unit_gross": "25.00"}],
        shipping_gross="5.00", klarna_order_id=klarna_id,
    )  # fmt: skip
    line_id = stack.saleor.order(order_id)["lines"][0]["id"]
    return order_id, line_id, klarna_id


def _open(
    page: Any,
    stack: Stack,
    path: str,
    token: str,
    *,
    theme: str = "light",
    width: int = 1280,
    height: int = 900,
    **params: str,
) -> Any:
    """Load the stand-in dashboard embedding ``path``; return the app's frame."""
    query = {"theme": theme, **params} if theme else params
    page.goto(
        stack.dashboard.page(stack.app_page(path, **query), token, theme=theme or "light", width=width, height=height)
    )
    return page.frame_locator("#app")


def _app_frame(page: Any) -> Any:
    return next(f for f in page.frames if f.url.split("?")[0].endswith(("/app", "/widgets/order")))


def _shoot(page: Any, path: Path) -> None:
    """Grow the iframe to its content (as the Dashboard's app area scrolls), then capture it."""
    frame = _app_frame(page)
    height = frame.evaluate("Math.ceil(document.documentElement.scrollHeight)")
    page.evaluate("h => { document.getElementById('app').height = h; }", height)
    page.set_viewport_size({"width": page.viewport_size["width"], "height": min(height, 5000)})
    page.wait_for_timeout(150)  # fonts and layout settle
    page.locator("#app").screenshot(path=str(path))


def test_settings_page_saves_and_the_worker_follows_the_mapping(page: Any, stack: Stack, screenshots: Path) -> None:
    token = stack.saleor.mint_token(user_permissions=ADMIN)
    sent_tokens: list[str | None] = []
    page.on("request", lambda request: sent_tokens.append(request.headers.get("authorization-bearer")))
    api_bodies: list[str] = []
    page.on(
        "response", lambda response: api_bodies.append(response.text()) if "/api/dashboard/" in response.url else None
    )
    order_a, line_a, klarna_a = _order(stack)
    order_b, line_b, klarna_b = _order(stack)
    order_c = stack.saleor.create_order(
        lines=[{"name": "Hat", "quantity": 1, "unit_gross": "10.00"}], klarna_order_id=str(uuid.uuid4())
    )  # Klarna does not know this one
    line_c = stack.saleor.order(order_c)["lines"][0]["id"]

    frame = _open(page, stack, "/app", token)
    frame.locator("#settings-form").wait_for(state="visible", timeout=TIMEOUT)

    # Given the handshake: notifyReady went up, and the channel list came from Saleor.
    messages = page.evaluate("window.dashboard.messages")
    assert any(m["type"] == "notifyReady" for m in messages)
    assert frame.locator("#channel-select option").all_inner_texts()[:2] == [
        "All channels",
        "Default Channel · USD (uses the settings for all channels)",
    ]
    # Nonsensical actions cannot be picked.
    assert frame.locator('select[name="mapping.UNFULFILLED"] option[value="capture"]').is_disabled()
    assert frame.locator('select[name="mapping.FULFILLED"] option[value="refund"]').is_disabled()

    # When the admin enters credentials and remaps FULFILLED and PARTIALLY_FULFILLED to "none".
    frame.locator('select[name="region"]').select_option("EU")
    frame.locator('select[name="environment"]').select_option("playground")
    frame.locator('input[name="username"]').fill("PK_test")
    frame.locator('input[name="password"]').fill("secret")
    frame.locator('select[name="mapping.FULFILLED"]').select_option("none")
    frame.locator('select[name="mapping.PARTIALLY_FULFILLED"]').select_option("none")
    # and the authorization's life: checks every 6 hours, cancelled shipments flagged, no extension
    assert frame.locator('input[name="options.recheck_hours"]').input_value() == "24"
    frame.locator('input[name="options.recheck_hours"]').fill("6")
    frame.locator('input[name="options.cancelled_shipment"][value="flag"]').check()
    frame.locator('input[name="options.extend_authorization"]').uncheck()
    frame.locator("#test-button").click()
    frame.locator("#test-result.ok").wait_for(timeout=TIMEOUT)
    assert "Credentials work" in frame.locator("#test-result").inner_text()
    frame.locator("#save-button").click()
    frame.locator("#save-status", has_text="Saved.").wait_for(timeout=TIMEOUT)

    # Then after a reload the page shows them, the password only as "Set".
    page.reload()
    frame = page.frame_locator("#app")
    frame.locator("#settings-form").wait_for(state="visible", timeout=TIMEOUT)
    assert frame.locator('input[name="username"]').input_value() == "PK_test"
    assert frame.locator('input[name="password"]').input_value() == ""
    assert frame.locator("#password-state").inner_text() == "Set"
    assert frame.locator('select[name="mapping.FULFILLED"]').input_value() == "none"
    assert frame.locator('select[name="mapping.PARTIALLY_FULFILLED"]').input_value() == "none"
    assert frame.locator('input[name="options.recheck_hours"]').input_value() == "6"
    assert frame.locator('input[name="options.cancelled_shipment"][value="flag"]').is_checked()
    assert not frame.locator('input[name="options.extend_authorization"]').is_checked()
    assert frame.locator('input[name="options.update_authorization"]').is_checked()
    assert not any("secret" in body for body in api_bodies)

    # A forced nonsensical choice is refused by the server, next to the field, and nothing is saved.
    _app_frame(page).evaluate("""() => {
        const select = document.querySelector('select[name="mapping.UNFULFILLED"]');
        select.querySelector('option[value="capture"]').disabled = false;
        select.value = "capture";
        select.dispatchEvent(new Event("change", { bubbles: true }));
    }""")
    frame.locator("#save-button").click()
    refusal = frame.locator('[data-error-for="mapping.UNFULFILLED"]')
    refusal.wait_for(state="visible", timeout=TIMEOUT)
    assert refusal.inner_text() == "capture makes no sense for UNFULFILLED orders"
    frame.locator("#discard-button").click()

    # When order A ships under FULFILLED -> none, nothing is captured.
    captures = stack.klarna.fake.counts()["captures"]
    stack.saleor.fulfill(order_a, {line_a: 2}, tracking_number="TRACK-A")
    Worker(stack.services.sync_deps()).run_until_idle()
    assert stack.klarna.fake.counts()["captures"] == captures
    assert stack.klarna.fake.order(klarna_a)["status"] == "AUTHORIZED"

    # When the admin maps FULFILLED back to capture, order B's shipment is captured, once.
    frame.locator('select[name="mapping.FULFILLED"]').select_option("capture")
    frame.locator("#save-button").click()
    frame.locator("#save-status", has_text="Saved.").wait_for(timeout=TIMEOUT)
    stack.saleor.fulfill(order_b, {line_b: 2}, tracking_number="TRACK-B")
    stack.saleor.fulfill(order_c, {line_c: 1})
    Worker(stack.services.sync_deps()).run_until_idle()
    assert stack.klarna.fake.counts()["captures"] == captures + 1
    assert stack.klarna.fake.order(klarna_b)["status"] == "CAPTURED"
    assert stack.klarna.fake.order(klarna_a)["status"] == "AUTHORIZED"
    assert any("captured 55.00 USD" in note for note in stack.saleor.notes(order_b))
    # Every signed webhook the FakeSaleor sent was verified and accepted by the app.
    assert stack.saleor.delivered
    assert {status for _, status in stack.saleor.delivered} == {200}

    # Then the operations log shows it, and the badge order C's exception (Klarna does not know its order).
    frame.locator("#operations-refresh").click()
    frame.locator("#operations-body tr", has_text="Capture").first.wait_for(timeout=TIMEOUT)
    assert "succeeded" in frame.locator("#operations-body tbody tr").first.inner_text()
    frame.locator("#exceptions-badge", has_text="1 open exception").wait_for(timeout=TIMEOUT)
    assert "#" + stack.saleor.order(order_c)["number"] in frame.locator("#exceptions-body").inner_text()
    frame.locator("#operations-body details summary").first.click()
    log_text = frame.locator("#operations-body details pre").first.inner_text()
    assert '"captured_amount": 5500' in log_text
    assert "[REDACTED]" in log_text
    assert "UEtfdGVzdDpzZWNyZXQ" not in log_text

    # The evil sibling frame's handshake and theme were ignored all along.
    assert "evil-token" not in sent_tokens
    assert token in sent_tokens
    assert _app_frame(page).evaluate("document.documentElement.dataset.theme") == "light"

    _shoot(page, screenshots / "settings-light.png")
    page.evaluate("setTheme('dark')")
    _app_frame(page).wait_for_function("document.documentElement.dataset.theme === 'dark'", timeout=TIMEOUT)
    _shoot(page, screenshots / "settings-dark.png")

    # Dismissing the exception clears the badge.
    frame.locator("#exceptions-body button", has_text="Dismiss").click()
    frame.locator("#exceptions-badge", has_text="No open exceptions").wait_for(timeout=TIMEOUT)


def test_settings_page_fits_a_narrow_iframe(page: Any, stack: Stack, screenshots: Path) -> None:
    token = stack.saleor.mint_token(user_permissions=ADMIN)
    page.set_viewport_size({"width": 480, "height": 900})

    frame = _open(page, stack, "/app", token, width=480)
    frame.locator("#settings-form").wait_for(state="visible", timeout=TIMEOUT)

    overflow = _app_frame(page).evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    _shoot(page, screenshots / "settings-narrow-light.png")


def test_an_expired_token_is_refused_until_the_dashboard_refreshes_it(page: Any, stack: Stack) -> None:
    expired = stack.saleor.mint_token(user_permissions=ADMIN, now=time.time() - 600)

    frame = _open(page, stack, "/app", expired)
    frame.locator("#status.critical", has_text="Not signed in").wait_for(timeout=TIMEOUT)
    assert frame.locator("#settings-form").is_hidden()
    page.evaluate("t => refreshToken(t)", stack.saleor.mint_token(user_permissions=ADMIN))

    frame.locator("#settings-form").wait_for(state="visible", timeout=TIMEOUT)
    frame.locator("#status").wait_for(state="hidden", timeout=TIMEOUT)  # cleared once the page has loaded


def test_read_only_user_sees_a_disabled_form(page: Any, stack: Stack) -> None:
    token = stack.saleor.mint_token(user_permissions=("MANAGE_ORDERS",))

    frame = _open(page, stack, "/app", token)
    frame.locator("#settings-form").wait_for(state="visible", timeout=TIMEOUT)

    assert frame.locator("#save-button").is_disabled()
    assert frame.locator('input[name="username"]').is_disabled()
    assert "Manage apps" in frame.locator("#save-status").inner_text()


def test_order_widget_shows_klarna_state_and_retries(page: Any, stack: Stack, screenshots: Path) -> None:
    with stack.app.test_client() as client:
        headers = {
            "authorization-bearer": stack.saleor.mint_token(user_permissions=ADMIN),
            "saleor-api-url": stack.saleor.api_url,
        }
        saved = client.put("/api/dashboard/settings/*", headers=headers, json={
            "region": "EU", "environment": "playground", "username": "PK_test", "password": "secret",
            "mapping": {"FULFILLED": "capture", "PARTIALLY_FULFILLED": "capture"},
        })  # fmt: skip
        assert saved.status_code == 200
    order_id, line_id, klarna_id = _order(stack)
    stack.saleor.fulfill(order_id, {line_id: 1}, tracking_number="1Z999AA10123456784")
    Worker(stack.services.sync_deps()).run_until_idle()
    with stack.services.db.transaction() as session:
        op = session.query(Operation).filter_by(order_id=order_id, kind="capture").one()
        session.add(ProcessException(
            saleor_api_url=stack.saleor.api_url, order_id=order_id, error_code="REFUND_NOT_ALLOWED",
            message="Klarna: refund of 25.00 USD failed: REFUND_NOT_ALLOWED", log=json.dumps([]),
        ))  # fmt: skip
    widget_token = stack.saleor.mint_token(
        permissions=("MANAGE_ORDERS",), user_permissions=ADMIN, app_extension=gid("AppExtension", 1)
    )
    page.set_viewport_size({"width": 360, "height": 700})

    # The Dashboard builds widget URLs without ?theme and sends the theme by message.
    frame = _open(page, stack, "/widgets/order", widget_token, theme="", width=360, height=200, orderId=order_id)
    frame.locator(".kv").wait_for(timeout=TIMEOUT)

    text = frame.locator("#widget").inner_text()
    assert "Partly captured" in text
    assert klarna_id in text
    assert op.klarna_resource_id in text
    assert "30.00 USD" in text
    assert "25.00 USD" in text
    assert "REFUND_NOT_ALLOWED" in text
    # the badge warns of the open exception; the expiry shows while something remains authorized
    assert "1 open exception(s) need a look" in text and "Authorization expires" in text
    resized = [m for m in page.evaluate("window.dashboard.messages") if m["type"] == "widgetResize"]
    assert resized
    assert resized[-1]["payload"]["height"] > 150
    _shoot(page, screenshots / "widget-light.png")
    page.evaluate("setTheme('dark')")
    _app_frame(page).wait_for_function("document.documentElement.dataset.theme === 'dark'", timeout=TIMEOUT)
    _shoot(page, screenshots / "widget-dark.png")

    frame.locator("button", has_text="Retry").click()
    frame.locator("text=Open exceptions").wait_for(state="detached", timeout=TIMEOUT)
    with stack.services.db.transaction() as session:
        assert session.query(ProcessException).filter_by(order_id=order_id).one().state == "retried"
