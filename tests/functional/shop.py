"""An end-to-end harness: the app, a FakeSaleor that installs it and sends it signed webhooks,
a FakeKlarna behind real HTTP, and a worker to drain the queue."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from plugin.app import Services, create_app
from plugin.db.models import Job, Operation, ProcessException, utcnow
from plugin.domain.money import to_minor
from plugin.services.merchant import MerchantSettings
from plugin.settings import Settings
from plugin.testing.catalog import SHOE, TEE
from plugin.testing.klarna import FakeClock, FakeKlarna, FakeKlarnaServer
from plugin.testing.saleor import FakeSaleor, wsgi_transport
from plugin.worker import Worker


class Shop:
    def __init__(self, settings: Settings, clock: FakeClock | None = None) -> None:
        """``clock``: Klarna's and the app's time, moved by :meth:`advance` (the queue's time follows)."""
        self.clock = clock
        self.klarna_server = FakeKlarnaServer(FakeKlarna(now=clock) if clock else None).start()
        self.klarna = self.klarna_server.fake
        self.settings = replace(settings, klarna_base_url=self.klarna_server.base_url)
        self.services = Services.build(self.settings)
        self.app = create_app(services=self.services)
        self.saleor = FakeSaleor(app_transport=wsgi_transport(self.app.wsgi_app)).start()
        deps = self.services.sync_deps()
        self.worker = Worker(replace(deps, now=clock) if clock else deps, concurrency=4, retry_base=0.01)

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> None:
        """Time passes: Klarna's clock moves, and every waiting job comes that much closer to due."""
        assert self.clock is not None, "Shop(settings, clock=FakeClock(...))"
        step = delta if delta is not None else timedelta(**kwargs)
        self.clock.advance(step)
        with self.services.db.transaction() as session:
            for job in session.scalars(select(Job).where(Job.requested_seq > Job.done_seq)):
                job.run_after = job.run_after - step

    def scheduled(self, order_id: str) -> timedelta | None:
        """How long until the order's next check (None: no check waiting)."""
        with self.services.db.transaction() as session:
            job = session.scalars(select(Job).where(Job.order_id == order_id)).one_or_none()
            if job is None or job.requested_seq <= job.done_seq:
                return None
            return job.run_after - utcnow()

    def close(self) -> None:
        self.saleor.stop()
        self.klarna_server.stop()
        self.services.db.dispose()

    def install(self, **merchant: Any) -> None:
        result = self.saleor.install(f"{self.settings.public_base}/api/manifest")
        assert result.ok, result
        self.configure(**merchant)

    def configure(self, **fields: Any) -> None:
        merchant = MerchantSettings(channel="*", username="PK_test", password="secret", **fields)
        with self.services.db.transaction() as session:
            self.services.store.save(session, self.saleor.api_url, merchant)

    def order(
        self,
        lines: list[dict[str, Any]] | None = None,
        *,
        shipping: str = "0.00",
        fraud_status: str = "ACCEPTED",
        currency: str = "USD",
        klarna: bool = True,
        total: str | None = None,
        **extra: Any,
    ) -> tuple[str, str | None]:
        lines = lines or [dict(TEE), dict(SHOE)]
        gross = sum(Decimal(line["unit_gross"]) * line["quantity"] for line in lines) + Decimal(shipping)
        amount = to_minor(total or gross, currency)
        klarna_id = None
        if klarna:
            klarna_id = self.klarna.create_order(order_amount=amount, currency=currency, fraud_status=fraud_status)
        order_id = self.saleor.create_order(
            lines=lines, currency=currency, shipping_gross=shipping, total_gross=total,
            klarna_order_id=klarna_id, klarna_via="transaction" if klarna else "none", **extra,
        )  # fmt: skip
        return order_id, klarna_id

    def line_ids(self, order_id: str) -> list[str]:
        return [line["id"] for line in self.saleor.order(order_id)["lines"]]

    def sync(self, timeout: float = 15.0) -> None:
        """Run the worker until no job is due or about to be (short retries included; a fraud re-check
        scheduled minutes ahead is not waited for)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.worker.run_until_idle()
            soon = utcnow() + timedelta(seconds=5)
            with self.services.db.transaction() as session:
                waiting = session.scalar(
                    select(func.count()).select_from(Job).where(Job.requested_seq > Job.done_seq, Job.run_after < soon)
                )
            if not waiting:
                return
            time.sleep(0.02)
        raise AssertionError("jobs still waiting after the timeout")

    def kstate(self, klarna_id: str) -> dict[str, Any]:
        return self.klarna.order(klarna_id)

    def performed(self, kind: str) -> int:
        """Operations the fake Klarna performed (replays of an idempotency key not counted)."""
        return int(self.klarna.counts()[kind])

    def exceptions(self) -> list[ProcessException]:
        with self.services.db.transaction() as session:
            return list(session.scalars(select(ProcessException).order_by(ProcessException.id)))

    def operations(self) -> list[Operation]:
        with self.services.db.transaction() as session:
            return list(session.scalars(select(Operation).order_by(Operation.id)))
