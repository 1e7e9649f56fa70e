"""``klarna-om demo``: the product working end to end on loopback, in one command.

The app serves on a free port with an in-process worker; a fake Saleor 3.23 installs it and sends
signed webhooks; a fake Klarna OM answers. Both fakes ship with the package (plugin/testing), so the
demo runs from any folder of a plain install.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sqlalchemy import func, select

from plugin.app import Services, create_app
from plugin.db.models import Job
from plugin.domain.money import format_minor
from plugin.services.merchant import MerchantSettings
from plugin.settings import Settings
from plugin.testing.catalog import SHOE, TEE
from plugin.worker import Worker


def run(echo: Callable[[str], None] = click.echo) -> None:
    # The fakes load Saleor's schema and Klarna's OpenAPI spec: imported only when the demo runs.
    from plugin.testing.klarna import FakeKlarnaServer as fake_klarna_cls
    from plugin.testing.loopback import LoopbackServer as loopback_cls
    from plugin.testing.saleor import FakeSaleor as fake_saleor_cls

    workdir = Path(tempfile.mkdtemp(prefix="klarna-om-demo-"))
    klarna_server = fake_klarna_cls().start()
    holder: dict[str, Any] = {}
    # The app's URL must be known before the app is built (it fills the manifest).
    server = loopback_cls(lambda environ, start_response: holder["app"](environ, start_response), "demo-app")
    settings = Settings(
        public_url=f"http://127.0.0.1:{server.port}", database_url=f"sqlite:///{workdir / 'demo.sqlite3'}",
        secret_keys=("demo-secret-key-not-for-production-use-0123456789",), instance_path=workdir,
        klarna_base_url=klarna_server.base_url, retry_base_seconds=0.2, log_level="WARNING",
        allowed_saleor_urls=(r"re:http://127\.0\.0\.1:\d+/graphql/",),  # only the demo's own fake Saleor
        saleor_allow_loopback=True,  # the demo's Saleor is a fake on 127.0.0.1
    ).validated()  # fmt: skip
    services = Services.build(settings)
    services.db.upgrade()
    app = create_app(services=services)
    holder["app"] = app
    worker = Worker(services.sync_deps(), concurrency=4, poll_interval=0.05, retry_base=0.2)
    app.extensions["klarna_om_worker"] = worker
    worker.start_thread()
    saleor = fake_saleor_cls().start()
    klarna = klarna_server.fake
    try:
        echo(
            f"App on {settings.public_base}, fake Saleor on {saleor.api_url}, fake Klarna on {klarna_server.base_url}\n"
        )
        result = saleor.install(f"{settings.public_base}/api/manifest")
        echo(f"Saleor installed the app: HTTP {result.status}, app id {result.app_id}")
        with services.db.transaction() as session:
            services.store.save(
                session, saleor.api_url, MerchantSettings(channel="*", username="PK_demo", password=klarna.password)
            )
        klarna.username = "PK_demo"
        echo("Klarna credentials stored for every channel (default status mapping)\n")
        shown: dict[str, int] = {}

        def settle(title: str, order_id: str, kid: str) -> None:
            _wait_idle(services)
            echo(f"== {title}")
            notes = saleor.notes(order_id)
            for note in notes[shown.get(order_id, 0) :]:
                echo(f"   note: {note}")
            shown[order_id] = len(notes)
            k = klarna.order(kid)
            cur = k["purchase_currency"]
            echo(
                f"   Klarna {kid[:8]}: {k['status']}, captured {format_minor(k['captured_amount'], cur)}, "
                f"refunded {format_minor(k['refunded_amount'], cur)}, remaining {format_minor(k['remaining_authorized_amount'], cur)}\n"
            )

        kid_a = klarna.create_order(order_amount=13000, currency="USD")
        order_a = saleor.create_order(lines=[dict(TEE), dict(SHOE)], klarna_order_id=kid_a, number=21)
        tee_a, shoe_a = (line["id"] for line in saleor.order(order_a)["lines"])
        settle("Order #21 placed: 2x Monospace Tee + 1x Dash Force, 130.00 USD authorized", order_a, kid_a)
        first = saleor.fulfill(order_a, {tee_a: 1, shoe_a: 1}, tracking_number="1Z999AA10123456784")
        settle("Order #21 shipment 1 (Tee + Dash Force) -> PARTIALLY_FULFILLED", order_a, kid_a)
        saleor.fulfill(order_a, {tee_a: 1}, tracking_number="1Z999AA10123456795")
        settle("Order #21 shipment 2 (Tee) -> FULFILLED", order_a, kid_a)
        saleor.return_products(order_a, first, {tee_a: 1})
        settle("Order #21 one Tee returned from shipment 1 -> PARTIALLY_RETURNED", order_a, kid_a)

        kid_b = klarna.create_order(order_amount=11000, currency="USD")
        order_b = saleor.create_order(
            lines=[dict(TEE), dict(SHOE)], klarna_order_id=kid_b, number=22, total_gross="110.00", shipping_gross="0.00"
        )
        _tee_b, shoe_b = (line["id"] for line in saleor.order(order_b)["lines"])
        saleor.fulfill(order_b, {shoe_b: 1}, tracking_number="1Z999AA10123456800")
        settle("Order #22 (110.00 USD after a 20.00 order discount) shipment 1 (Dash Force)", order_b, kid_b)
        for fulfillment in saleor.order(order_b)["fulfillments"]:
            saleor.cancel_fulfillment(order_b, fulfillment["id"])
        saleor.cancel_order(order_b)
        settle("Order #22: its shipment cancelled (goods back in stock), then the order", order_b, kid_b)
        echo(f"Klarna performed: {klarna.counts()}")
    finally:
        worker.stop()
        saleor.stop()
        klarna_server.stop()
        server.stop()
        services.db.dispose()


def _wait_idle(services: Services, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    time.sleep(0.1)
    while time.monotonic() < deadline:
        with services.db.transaction() as session:
            waiting = session.scalar(select(func.count()).select_from(Job).where(Job.requested_seq > Job.done_seq))
        if not waiting:
            return
        time.sleep(0.05)
