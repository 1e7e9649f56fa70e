"""The app under a real gunicorn: Saleor installs it and delivers webhooks over real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from plugin.app import Services
from plugin.services.merchant import MerchantSettings
from plugin.settings import Settings
from plugin.testing.klarna import FakeKlarnaServer
from plugin.testing.saleor import FakeSaleor
from plugin.worker import Worker
from tests.conftest import SECRET

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_install_and_capture_through_gunicorn(database_url: str, tmp_path: Path) -> None:
    port = _free_port()
    public = f"http://127.0.0.1:{port}"
    klarna_server = FakeKlarnaServer().start()
    env = {
        **os.environ, "DATABASE_URL": database_url, "KLARNA_APP_SECRET_KEYS": SECRET, "KLARNA_APP_PUBLIC_URL": public,
        "KLARNA_APP_ENV": "production", "KLARNA_APP_INSTANCE_PATH": str(tmp_path), "KLARNA_BASE_URL": klarna_server.base_url,
        "KLARNA_APP_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2",
        # production: a loopback Saleor only through the allowlist and the explicit loopback setting
        "KLARNA_APP_ALLOWED_SALEOR_URLS": r"re:http://127\.0\.0\.1:[0-9]+/graphql/", "KLARNA_APP_SALEOR_ALLOW_LOOPBACK": "1",
    }  # fmt: skip
    gunicorn = Path(sys.executable).parent / "gunicorn"
    proc = subprocess.Popen([str(gunicorn), "-c", str(ROOT / "gunicorn.conf.py")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    saleor = FakeSaleor().start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{public}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        else:
            proc.kill()
            pytest.fail(f"gunicorn did not start: {proc.communicate()[0].decode()[-2000:]}")
        # when Saleor installs the app over HTTP and an order ships
        assert saleor.install(f"{public}/api/manifest").ok
        settings = Settings(public_url=public, database_url=database_url, secret_keys=(SECRET,), instance_path=tmp_path,
                            klarna_base_url=klarna_server.base_url, saleor_allow_loopback=True).validated()  # fmt: skip
        services = Services.build(settings)
        with services.db.transaction() as session:
            services.store.save(
                session, saleor.api_url, MerchantSettings(channel="*", username="PK_test", password="secret")
            )
        kid = klarna_server.fake.create_order(order_amount=2000)
        order_id = saleor.create_order(
            lines=[
                {
                    "name": "Tee",
                    "sku": "T",
                    "quantity": 1,
                    "unit_gross": "20.00",
                    "unit_net": "20.00",
                    "tax_rate": "0.00",
                }
            ],
            klarna_order_id=kid,
        )
        line = saleor.order(order_id)["lines"][0]["id"]
        saleor.fulfill(order_id, {line: 1}, tracking_number="Z1")
        assert saleor.delivered and all(status == 200 for _, status in saleor.delivered)
        # then a worker process on the same database captures it and the note reaches Saleor
        Worker(services.sync_deps(), retry_base=0.01).run_until_idle()
        assert klarna_server.fake.order(kid)["captured_amount"] == 2000
        assert len(saleor.notes(order_id)) == 1
        services.db.dispose()
    finally:
        proc.terminate()
        proc.wait(20)
        saleor.stop()
        klarna_server.stop()
