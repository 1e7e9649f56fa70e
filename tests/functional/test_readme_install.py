"""The README's install section, followed as written: its shell blocks run in bash, against a fake
Saleor (and a fake Klarna) on loopback. Only the ports change: the documented 5000 and 8000 become
free ports, and the Saleor API URL the fake's."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from plugin.testing.klarna import FakeKlarna, FakeKlarnaServer
from plugin.testing.saleor import FakeSaleor

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCUMENTED_SALEOR = "http://localhost:8000/graphql/"


def block(name: str) -> str:
    """The ```sh block after ``<!-- install:name -->``."""
    start = README.index(f"<!-- install:{name} -->\n```sh\n") + len(f"<!-- install:{name} -->\n```sh\n")
    return README[start : README.index("\n```", start)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path, klarna_url: str) -> dict[str, str]:
    """A clean shell: the venv's klarna-om on PATH, nothing of ours set except where the test keeps its files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLARNA_") and k != "DATABASE_URL"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["KLARNA_APP_INSTANCE_PATH"] = str(tmp_path / "instance")
    env["KLARNA_BASE_URL"] = klarna_url  # the fake Klarna instead of Klarna's playground
    return env


class Serving:
    """A README block that ends in `klarna-om serve`, running in bash until stopped."""

    def __init__(self, script: str, env: dict[str, str], cwd: Path, port: int) -> None:
        self.port = port
        self.log = cwd / "serve.log"
        self.proc = subprocess.Popen(["bash", "-e", "-c", script], env=env, cwd=cwd, start_new_session=True,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
            if self.proc.poll() is not None:
                break
        self.stop()
        pytest.fail(f"klarna-om serve did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> list[dict[str, object]]:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        lines = [line for line in self.log.read_text().splitlines() if line.strip()]
        return [json.loads(line) for line in lines]  # one format: every line is a JSON object


@pytest.fixture
def klarna() -> Iterator[FakeKlarnaServer]:
    # The README's example credentials are the fake's.
    server = FakeKlarnaServer(FakeKlarna(username="PK12345_abcdef", password="your-klarna-api-password")).start()
    yield server
    server.stop()


@pytest.fixture
def saleor() -> Iterator[FakeSaleor]:
    fake = FakeSaleor().start()
    yield fake
    fake.stop()


def test_a_saleor_on_this_machine(tmp_path: Path, klarna: FakeKlarnaServer, saleor: FakeSaleor) -> None:
    port = _free_port()
    env = _env(tmp_path, klarna.base_url)

    def as_here(text: str) -> str:
        assert DOCUMENTED_SALEOR in text or "5000" in text
        return text.replace(DOCUMENTED_SALEOR, saleor.api_url).replace("5000", str(port))

    # Settings as code first: this Saleor has not installed the app yet.
    imported = subprocess.run(["bash", "-e", "-c", as_here(block("settings"))], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert "has not installed the app yet" in imported.stdout

    serving = Serving(as_here(block("local")), env, tmp_path, port)
    try:
        # Apps → Install external app → the manifest URL the README says to paste.
        pasted = README.split("<!-- install:local -->", 1)[1].split("and paste `", 1)[1].split("`", 1)[0]
        result = saleor.install(as_here(pasted))
        assert result.ok, result
        # A Klarna order ships in Saleor: the app captures it, with the imported credentials.
        klarna_id = klarna.fake.create_order(order_amount=5000, currency="USD")
        order_id = saleor.create_order(
            lines=[{"name": "Wool scarf", "sku": "SCARF-1", "quantity": 2, "unit_gross": "25.00"}],
            klarna_order_id=klarna_id,
        )  # fmt: skip
        line_id = saleor.order(order_id)["lines"][0]["id"]
        saleor.fulfill(order_id, {line_id: 2}, tracking_number="1Z999AA10123456784")
        deadline = time.monotonic() + 60
        while klarna.fake.order(klarna_id)["status"] != "CAPTURED" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert klarna.fake.order(klarna_id)["status"] == "CAPTURED"
    finally:
        log = serving.stop()
    messages = [str(entry["message"]) for entry in log]
    assert any("Install external app" in m and f"http://127.0.0.1:{port}/api/manifest" in m for m in messages)
    assert any(entry.get("path") == "/api/register" and entry.get("status") == 200 for entry in log)
    # The loopback warning names the Saleor setting the README asks for.
    assert any("HTTP_IP_FILTER_ALLOW_LOOPBACK_IPS" in str(entry) for entry in log if entry["level"] == "WARNING")


@pytest.mark.parametrize(
    ("name", "public_url", "warning"),
    [
        ("docker", "http://192.168.1.20:{port}", "HTTP_IP_FILTER_ENABLED=False"),
        ("cloud", "https://klarna-om-demo.trycloudflare.com", None),
    ],
)
def test_docker_and_cloud_blocks_advertise_the_url_to_paste(
    tmp_path: Path, klarna: FakeKlarnaServer, name: str, public_url: str, warning: str | None
) -> None:
    port = _free_port()
    script = block(name).replace("5000", str(port))
    serving = Serving(script, _env(tmp_path, klarna.base_url), tmp_path, port)
    try:
        manifest = requests.get(f"http://127.0.0.1:{port}/api/manifest", timeout=5).json()
    finally:
        log = serving.stop()
    expected = public_url.format(port=port)
    assert manifest["appUrl"] == f"{expected}/app" and manifest["tokenTargetUrl"] == f"{expected}/api/register"
    pasted = README.split(f"<!-- install:{name} -->", 1)[1].split("and paste `", 1)[1].split("`", 1)[0]
    assert pasted.replace("5000", str(port)) == f"{expected}/api/manifest"
    url_warnings = [str(e) for e in log if e["level"] == "WARNING" and "may not work for Saleor" in str(e["message"])]
    if warning is None:
        assert url_warnings == []
    else:
        assert url_warnings and warning in " ".join(url_warnings)
