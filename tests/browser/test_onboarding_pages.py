"""Issue 12 in Chromium: order numbers, the settings page's Save/Reset/password badge, the widget's
layout, and every page (settings, widget, the manifest's public pages) at 1280 px and 480 px, light and dark.

Screenshots land in test-artifacts/screenshots/ (onboard-*.png).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from plugin.db.models import ProcessException
from plugin.testing.saleor import gid
from plugin.worker import Worker
from tests.browser.conftest import Stack
from tests.browser.test_dashboard_pages import ADMIN, TIMEOUT, _app_frame, _open, _order, _shoot

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def shipped(stack: Stack) -> dict[str, str]:
    """Credentials stored, one order shipped and captured, one open exception: a page with rows."""
    with stack.app.test_client() as client:
        headers = {
            "authorization-bearer": stack.saleor.mint_token(user_permissions=ADMIN),
            "saleor-api-url": stack.saleor.api_url,
        }
        saved = client.put("/api/dashboard/settings/*", headers=headers, json={
            "region": "EU", "environment": "playground", "username": "PK_test", "password": "secret",
        })  # fmt: skip
        assert saved.status_code == 200
    order_id, line_id, klarna_id = _order(stack)
    stack.saleor.fulfill(order_id, {line_id: 1}, tracking_number="1Z999AA10123456784")
    Worker(stack.services.sync_deps()).run_until_idle()
    with stack.services.db.transaction() as session:
        session.add(ProcessException(
            saleor_api_url=stack.saleor.api_url, order_id=order_id, error_code="REFUND_NOT_ALLOWED",
            message="REFUND_NOT_ALLOWED: Refund not allowed for this order", correlation_id="corr-123", log="[]",
        ))  # fmt: skip
    return {"order_id": order_id, "klarna_id": klarna_id, "number": stack.saleor.order(order_id)["number"]}


def _no_sideways_scroll(page: Any) -> None:
    overflow = _app_frame(page).evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("width", [1280, 480])
def test_settings_page_shows_order_numbers_and_its_state_column(
    page: Any, stack: Stack, shipped: dict[str, str], screenshots: Path, width: int, theme: str
) -> None:
    token = stack.saleor.mint_token(user_permissions=ADMIN)
    page.set_viewport_size({"width": width, "height": 900})
    frame = _open(page, stack, "/app", token, theme=theme, width=width)
    frame.locator("#operations-body tbody tr").first.wait_for(timeout=TIMEOUT)
    frame.locator("#exceptions-body tbody tr").first.wait_for(timeout=TIMEOUT)

    # Orders are Saleor's numbers, linking to the order; raw ids are gone from both lists.
    number = "#" + shipped["number"]
    assert frame.locator("#operations-body .order-number").first.inner_text() == number
    assert frame.locator("#exceptions-body .order-number").first.inner_text() == number
    assert shipped["order_id"] not in frame.locator("#operations-body tbody").inner_text()
    # The error code is said once (in its pill), as is the correlation id.
    exceptions = frame.locator("#exceptions-body").inner_text()
    assert exceptions.count("REFUND_NOT_ALLOWED") == 1 and exceptions.count("corr-123") == 1
    # The State column is in view without scrolling, at any width.
    state = frame.locator("#operations-body th", has_text="State").bounding_box()
    assert state is not None and state["x"] + state["width"] <= width
    # Nothing to save yet; the developer notice about KLARNA_BASE_URL is not for merchants.
    assert frame.locator("#save-button").is_disabled() and frame.locator("#discard-button").is_disabled()
    assert "KLARNA_BASE_URL" not in frame.locator("body").inner_text()
    _no_sideways_scroll(page)
    _shoot(page, screenshots / f"onboard-settings-{width}-{theme}.png")
    for section in ("exceptions", "operations"):
        frame.locator(f"#{section}").screenshot(
            path=str(screenshots / f"onboard-settings-{width}-{theme}-{section}.png")
        )


def test_save_reset_and_the_tested_password(page: Any, stack: Stack, shipped: dict[str, str]) -> None:
    token = stack.saleor.mint_token(user_permissions=ADMIN)
    frame = _open(page, stack, "/app", token)
    frame.locator("#settings-form").wait_for(state="visible", timeout=TIMEOUT)

    # A change makes Save live; Discard puts it back and Save is idle again.
    frame.locator('select[name="mapping.FULFILLED"]').select_option("none")
    assert frame.locator("#save-button").is_enabled()
    frame.locator("#discard-button").click()
    assert frame.locator("#save-button").is_disabled()

    # A channel that copied the all-channels mapping can go back to the defaults.
    frame.locator("#channel-select").select_option("default-channel")
    frame.locator('select[name="mapping.FULFILLED"]').select_option("none")
    frame.locator("#defaults-button").click()
    assert frame.locator('select[name="mapping.FULFILLED"]').input_value() == "capture"
    assert frame.locator("#save-button").is_enabled()
    frame.locator("#discard-button").click()

    # A typed password that Klarna accepts is "Tested, not saved", not "Not set".
    frame.locator("#channel-select").select_option("*")
    frame.locator('input[name="password"]').fill("secret")
    frame.locator("#test-button").click()
    frame.locator("#test-result.ok").wait_for(timeout=TIMEOUT)
    assert frame.locator("#password-state").inner_text() == "Tested, not saved"


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("width", [1280, 480])
def test_widget_keeps_off_the_edges_and_labels_the_klarna_order(
    page: Any, stack: Stack, shipped: dict[str, str], screenshots: Path, width: int, theme: str
) -> None:
    token = stack.saleor.mint_token(
        permissions=("MANAGE_ORDERS",), user_permissions=ADMIN, app_extension=gid("AppExtension", 1)
    )
    page.set_viewport_size({"width": width, "height": 700})
    frame = _open(page, stack, "/widgets/order", token, theme="", width=width, height=200, orderId=shipped["order_id"])
    frame.locator(".kv").wait_for(timeout=TIMEOUT)
    page.evaluate(f"setTheme('{theme}')")
    _app_frame(page).wait_for_function(f"document.documentElement.dataset.theme === '{theme}'", timeout=TIMEOUT)

    text = frame.locator("#widget").inner_text()
    assert "Klarna order" in text and shipped["klarna_id"] in text
    assert text.count("REFUND_NOT_ALLOWED") == 1
    # Nothing touches the iframe's edges: every pill, amount and button keeps an inset.
    boxes = _app_frame(page).evaluate("""() => Array.from(document.querySelectorAll('.pill, .num, dd, button'))
        .map(el => el.getBoundingClientRect()).filter(r => r.width > 0).map(r => [r.left, r.right])""")
    assert boxes and all(left >= 2 and right <= width - 2 for left, right in boxes), boxes
    # "Authorization expires" sits on one line with its value.
    label = frame.locator("dt", has_text="Authorization expires").bounding_box()
    value = frame.locator("dt", has_text="Authorization expires").locator("xpath=../dd").bounding_box()
    assert label and value and abs(label["y"] - value["y"]) < 4 and label["height"] < 24
    _no_sideways_scroll(page)
    _shoot(page, screenshots / f"onboard-widget-{width}-{theme}.png")


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("width", [1280, 480])
@pytest.mark.parametrize("path", ["/", "/support", "/privacy"])
def test_public_pages(page: Any, stack: Stack, screenshots: Path, path: str, width: int, theme: str) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(f"{stack.app_url}{path}?theme={theme}")
    page.locator("main.doc").wait_for(timeout=TIMEOUT)
    assert page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 0
    assert page.evaluate("document.documentElement.dataset.theme") == theme
    name = path.strip("/") or "home"
    page.screenshot(path=str(screenshots / f"onboard-{name}-{width}-{theme}.png"), full_page=True)
