"""The browser suite's stack: the app under a real HTTP server, a FakeSaleor, a FakeKlarnaServer, and a
page on another origin that plays the Saleor dashboard (iframe + AppBridge handshake), in Debian's Chromium.

Playwright never downloads a browser here: it drives /usr/bin/chromium. Without it the suite skips,
unless KLARNA_OM_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from werkzeug.wrappers import Request, Response

from plugin.app import Services, create_app
from plugin.db import Database
from plugin.settings import Settings
from plugin.testing.klarna import FakeKlarna, FakeKlarnaServer
from plugin.testing.loopback import LoopbackServer
from plugin.testing.saleor import FakeSaleor
from tests.conftest import SECRET

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CHANNELS = [{"slug": "default-channel", "name": "Default Channel", "currencyCode": "USD"}]


class Server(LoopbackServer):
    """A WSGI app on 127.0.0.1:<free port>, served from a thread, with its base URL."""

    def __init__(self, wsgi: Callable[..., Any]) -> None:
        super().__init__(wsgi, "browser-test-server")
        self.url = f"http://127.0.0.1:{self.port}"


# The stand-in for the Dashboard: it embeds the app with the query string the Dashboard builds, sends
# the handshake on load and again in reply to notifyReady, forwards theme and tokenRefresh, and grows
# the iframe on widgetResize. A sibling iframe on another origin ("evil") keeps posting a handshake
# with its own token and a theme: the app must ignore both.
DASHBOARD_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Saleor dashboard (test)</title>
<style>html, body {{ margin: 0; background: {background}; }} iframe {{ border: 0; display: block; }} #evil {{ display: none; }}</style>
</head><body>
<iframe id="app" src="{src}" width="{width}" height="{height}"
        sandbox="allow-same-origin allow-forms allow-scripts allow-downloads allow-popups"></iframe>
<iframe id="evil" src="{evil}"></iframe>
<script>
  const frame = document.getElementById("app");
  const appOrigin = new URL(frame.src).origin;
  window.dashboard = {{ token: {token}, theme: {theme}, messages: [] }};
  function post(type, payload) {{ frame.contentWindow.postMessage({{ type, payload }}, appOrigin); }}
  function handshake() {{
    post("handshake", {{ token: window.dashboard.token, version: 1 }});
    post("theme", {{ theme: window.dashboard.theme }});
  }}
  frame.addEventListener("load", handshake);
  window.addEventListener("message", (event) => {{
    if (event.origin !== appOrigin || !event.data || !event.data.payload || !event.data.payload.actionId) return;
    window.dashboard.messages.push(event.data);
    if (event.data.type === "notifyReady") handshake();
    if (event.data.type === "widgetResize") frame.height = Math.min(event.data.payload.height, 5000);
  }});
  window.setTheme = (theme) => {{ window.dashboard.theme = theme; document.body.style.background = theme === "dark" ? "#262836" : "#fff"; post("theme", {{ theme }}); }};
  window.refreshToken = (token) => {{ window.dashboard.token = token; post("tokenRefresh", {{ token }}); }};
</script>
</body></html>
"""

EVIL_PAGE = """<!doctype html><html><body><script>
  setInterval(() => {
    const target = parent.frames[0];
    target.postMessage({ type: "handshake", payload: { token: "evil-token", version: 1 } }, "*");
    target.postMessage({ type: "theme", payload: { theme: "dark" } }, "*");
  }, 25);
</script></body></html>"""


@dataclass
class Dashboard:
    """Serves the stand-in dashboard page on its own origin (another port, so another origin)."""

    server: Server | None = None
    html: str = ""

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        body = EVIL_PAGE if request.path == "/evil" else self.html
        return Response(body, content_type="text/html; charset=utf-8")(environ, start_response)

    def page(self, src: str, token: str, *, theme: str = "light", width: int = 1280, height: int = 900) -> str:
        """Set the page that embeds ``src``; returns the dashboard's URL."""
        assert self.server is not None
        # "localhost" vs "127.0.0.1": the evil frame is a third origin on the same server.
        evil = self.server.url.replace("127.0.0.1", "localhost") + "/evil"
        self.html = DASHBOARD_PAGE.format(
            src=src, token=json.dumps(token), theme=json.dumps(theme), width=width, height=height, evil=evil,
            background="#262836" if theme == "dark" else "#fff",
        )  # fmt: skip
        return self.server.url + "/"


@dataclass
class Stack:
    services: Services
    app: Any
    app_url: str
    saleor: FakeSaleor
    klarna: FakeKlarnaServer
    dashboard: Dashboard

    def app_page(self, path: str, **params: str) -> str:
        """An iframe URL as the Dashboard builds it: the app URL plus saleorApiUrl, id and mount params."""
        from urllib.parse import urlencode

        query = {"domain": self.saleor.domain, "saleorApiUrl": self.saleor.api_url, "id": self.saleor.app_id, **params}
        return f"{self.app_url}{path}?{urlencode(query)}"


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium (the browser tests use Debian's Chromium, never a download)"
        if os.environ.get("KLARNA_OM_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One app (SQLite, no in-process worker: tests run the worker), its fakes and the dashboard page."""
    patcher = pytest.MonkeyPatch()
    patcher.setattr(FakeSaleor, "channels", tuple(CHANNELS))
    tmp = tmp_path_factory.mktemp("browser")
    klarna = FakeKlarnaServer(FakeKlarna(username="PK_test", password="secret")).start()
    holder: dict[str, Any] = {}
    app_server = Server(lambda environ, start_response: holder["app"](environ, start_response))
    settings = Settings(
        public_url=app_server.url, database_url=f"sqlite:///{tmp / 'app.sqlite3'}", secret_keys=(SECRET,),
        instance_path=tmp / "instance", klarna_base_url=klarna.base_url, retry_base_seconds=0.01, max_attempts=2,
        saleor_allow_loopback=True,
    ).validated()  # fmt: skip
    Database(settings.database_url).upgrade()
    services = Services.build(settings)
    holder["app"] = create_app(services=services)
    saleor = FakeSaleor().start()
    dashboard = Dashboard()
    dashboard.server = Server(dashboard.wsgi)
    try:
        result = saleor.install(f"{app_server.url}/api/manifest")
        assert result.ok, result
        yield Stack(services, holder["app"], app_server.url, saleor, klarna, dashboard)
    finally:
        dashboard.server.stop()
        saleor.stop()
        app_server.stop()
        klarna.stop()
        services.db.dispose()
        patcher.undo()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
