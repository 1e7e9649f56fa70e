"""Issue 12: from a clone to an installed app, and every error says what to do next."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from plugin.cli import announce, main
from plugin.db import Database
from plugin.settings import ConfigError, Settings, _default_instance
from plugin.startup import public_url_problems
from tests.conftest import SECRET
from tests.functional.shop import Shop

ROOT = Path(__file__).resolve().parents[2]

# Every command that opens the database, with what it needs to get that far.
DATABASE_COMMANDS = [
    ["serve", "--port", "0"],
    ["worker", "--wait-for-database", "0"],
    ["db", "upgrade"],
    ["db", "current"],
    ["settings", "export"],
    ["settings", "import", "{settings_file}"],
    ["ops", "list"],
    ["ops", "retry", "1"],
]
# (DATABASE_URL, what the line must name)
BROKEN_DATABASES = [
    pytest.param("postgresql://klarna:pw-not-shown@127.0.0.1:1/klarna", "127.0.0.1:1", id="postgres-down"),
    pytest.param("postgres://klarna:pw-not-shown@127.0.0.1:1/klarna", "127.0.0.1:1", id="postgres-scheme-down"),
    pytest.param("mysqlx://klarna:pw-not-shown@db/klarna", "DATABASE_URL", id="unknown-scheme"),
    pytest.param("sqlite:////proc/klarna-om/klarna.sqlite3", "/proc/klarna-om/klarna.sqlite3", id="sqlite-unwritable"),
]


@pytest.mark.parametrize(("url", "where"), BROKEN_DATABASES)
@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_command_says_a_broken_database_in_one_line(
    command: list[str], url: str, where: str, tmp_path: Path
) -> None:
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"channels": [{"channel": "*"}]}))
    env = {"DATABASE_URL": url, "KLARNA_APP_SECRET_KEYS": SECRET, "KLARNA_APP_INSTANCE_PATH": str(tmp_path)}
    args = [part.format(settings_file=settings_file) for part in command]
    result = CliRunner().invoke(main, args, env=env)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and where in lines[0] and "fix:" in lines[0], lines[0]
    assert "Traceback" not in result.output and "pw-not-shown" not in result.output


def test_serve_and_gunicorn_print_one_line_for_an_unreachable_database(tmp_path: Path) -> None:
    env = {
        **os.environ, "DATABASE_URL": "postgres://klarna:pw-not-shown@127.0.0.1:1/klarna", "KLARNA_APP_SECRET_KEYS": SECRET,
        "KLARNA_APP_INSTANCE_PATH": str(tmp_path), "KLARNA_APP_ENV": "production",
        "KLARNA_APP_BIND": "127.0.0.1:0", "WEB_CONCURRENCY": "1",
    }  # fmt: skip
    bin_dir = Path(sys.executable).parent
    serve = subprocess.run([str(bin_dir / "klarna-om"), "serve", "--port", "0"], env=env, capture_output=True,
                           text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert serve.returncode == 1
    assert serve.stdout == "" and serve.stderr.count("\n") == 1, serve.stderr
    assert "PostgreSQL at 127.0.0.1:1/klarna" in serve.stderr and "fix:" in serve.stderr
    gunicorn = subprocess.run([str(bin_dir / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")], env=env,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    output = gunicorn.stdout + gunicorn.stderr
    assert gunicorn.returncode != 0
    assert "Traceback" not in output and "pw-not-shown" not in output, output
    ours = [line for line in output.splitlines() if line.startswith("klarna-om:")]
    assert len(ours) == 1 and "127.0.0.1:1" in ours[0] and "fix:" in ours[0], output


def test_postgres_scheme_is_accepted(postgres_url: str) -> None:
    db = Database("postgres://" + postgres_url.removeprefix("postgresql://"))
    db.check_migrated()
    db.dispose()


def test_the_default_instance_folder_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _default_instance() == ROOT / "instance"
    monkeypatch.chdir(ROOT / "plugin")
    assert _default_instance() == ROOT / "instance"


@pytest.mark.parametrize("value", ["prod", "staging", "PRODUCTON"])
def test_app_env_refuses_anything_but_development_or_production(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="development or production"):
        Settings.from_env({"KLARNA_APP_ENV": value, "KLARNA_APP_INSTANCE_PATH": str(tmp_path)})


def test_version_and_every_option_has_help() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("klarna-om 0.")

    def walk(command, path):  # type: ignore[no-untyped-def]  # click commands and paths, walked recursively
        for param in command.params:
            if param.param_type_name == "option" and param.name not in ("help", "version"):
                assert param.help, f"{path} {param.opts} has no help"
        for name, sub in getattr(command, "commands", {}).items():
            assert sub.help, f"{path} {name} has no help"
            walk(sub, f"{path} {name}")

    walk(main, "klarna-om")


# -- settings import --------------------------------------------------------------------------


@pytest.fixture
def cli_env(shop: Shop, tmp_path: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": shop.settings.database_url, "KLARNA_APP_SECRET_KEYS": SECRET,
        "KLARNA_APP_INSTANCE_PATH": str(tmp_path / "cli-instance"), "KLARNA_APP_LOG_LEVEL": "ERROR",
    }  # fmt: skip


def test_settings_import_refuses_a_misspelt_status_with_the_valid_ones(
    shop: Shop, cli_env: dict[str, str], tmp_path: Path
) -> None:
    shop.install()
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"channels": [{"channel": "*", "mapping": {"FULLFILLED": "none"}}]}))
    result = CliRunner().invoke(main, ["settings", "import", str(path)], env=cli_env)
    assert result.exit_code == 1
    assert "'FULLFILLED' is not a Saleor order status" in result.output and "PARTIALLY_FULFILLED" in result.output
    with shop.services.db.transaction() as session:
        stored = shop.services.store.get_exact(session, shop.saleor.api_url, "*")
    assert stored is not None and "FULLFILLED" not in stored.mapping


def test_settings_imported_before_the_install_apply_when_that_saleor_installs(
    shop: Shop, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # given settings as code for a Saleor that has not installed the app (its URL spelt without the slash)
    api_url = shop.saleor.api_url
    doc = {
        "saleor_api_url": api_url.rstrip("/"),
        "channels": [
            {"channel": "*", "username": "PK_code", "password": "from-code", "mapping": {"PARTIALLY_FULFILLED": "none"}}
        ],
    }
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(doc))
    runner = CliRunner()
    exported = runner.invoke(main, ["settings", "export", "--saleor-api-url", api_url], env=cli_env)
    assert exported.exit_code == 1 and "this Saleor has not installed the app yet" in exported.output
    imported = runner.invoke(main, ["settings", "import", str(path)], env=cli_env)
    assert imported.exit_code == 0, imported.output
    assert "has not installed the app yet" in imported.output and "apply when it installs" in imported.output
    # when it installs the app
    assert shop.saleor.install(f"{shop.settings.public_base}/api/manifest").ok
    # then the settings are the installation's, the password included
    with shop.services.db.transaction() as session:
        stored = shop.services.store.get_exact(session, api_url, "*")
    assert stored is not None and (stored.username, stored.password) == ("PK_code", "from-code")
    assert stored.mapping["PARTIALLY_FULFILLED"].value == "none"


def test_settings_import_for_an_unknown_saleor_refuses_bad_settings_too(
    shop: Shop, cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"saleor_api_url": "https://shop.example.com/graphql/", "channels": [{"region": "XX"}]}))
    result = CliRunner().invoke(main, ["settings", "import", str(path)], env=cli_env)
    assert result.exit_code == 1 and "region" in result.output


# -- start-up and request logs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://0.0.0.0:5000", "listening addresses"),
        ("http://127.0.0.1:5000", "HTTP_IP_FILTER_ALLOW_LOOPBACK_IPS"),
        ("http://localhost:5000", "HTTP_IP_FILTER_ALLOW_LOOPBACK_IPS"),
        ("http://192.168.1.20:5000", "HTTP_IP_FILTER_ENABLED=False"),
        ("http://klarna-om.example.com", "https"),
    ],
)
def test_public_urls_that_cannot_work_for_saleor_are_explained(url: str, words: str) -> None:
    problems = public_url_problems(url)
    assert problems and words in " ".join(p.reason + " " + p.fix for p in problems)


def test_a_public_https_url_has_no_problem() -> None:
    assert public_url_problems("https://klarna-om.example.com") == []


def test_start_up_warns_about_the_public_url_and_says_the_next_step(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from dataclasses import replace

    with caplog.at_level(logging.INFO, logger="plugin"):
        announce(replace(settings, public_url="http://0.0.0.0:5055"), "http://0.0.0.0:5055")
    messages = [r.getMessage() for r in caplog.records]
    assert any("may not work for Saleor" in m for m in messages)
    assert any("Install external app" in m and "http://0.0.0.0:5055/api/manifest" in m for m in messages)


def test_every_request_is_logged_and_a_refused_register_says_why(shop: Shop, caplog: pytest.LogCaptureFixture) -> None:
    client = shop.app.test_client()
    token = "tok-0123456789-not-in-logs"
    with caplog.at_level(logging.INFO, logger="plugin"):
        assert client.get("/healthz").status_code == 200
        refused = client.post(
            "/api/register", json={"auth_token": token}, headers={"Saleor-Api-Url": "http://127.0.0.1:1/graphql/"}
        )
        assert refused.status_code == 401
        unsigned = client.post("/api/webhooks/order-events", data=b"{}", headers={"Saleor-Api-Url": "x"})
        assert unsigned.status_code == 400
    requests_logged = [r for r in caplog.records if r.getMessage() in ("request", "request refused")]
    by_path = {(r.path, r.status): r for r in requests_logged}  # type: ignore[attr-defined]  # fields added to the log record by the request logger
    assert ("/healthz", 200) in by_path and by_path[("/healthz", 200)].duration_ms >= 0  # type: ignore[attr-defined]  # fields added to the log record by the request logger
    register = by_path[("/api/register", 401)]
    assert register.code == "UNKNOWN_APP_ID" and register.levelname == "WARNING"  # type: ignore[attr-defined]  # fields added to the log record by the request logger
    assert by_path[("/api/webhooks/order-events", 400)].code == "MISSING_SALEOR_EVENT_HEADER"  # type: ignore[attr-defined]  # fields added to the log record by the request logger
    assert any(r.getMessage() == "the app id could not be read from Saleor" for r in caplog.records)
    assert token not in caplog.text


# -- the manifest's pages -------------------------------------------------------------------------


def test_manifest_links_are_real_pages_and_the_author_is_a_person_or_group(shop: Shop) -> None:
    client = shop.app.test_client()
    manifest = client.get("/api/manifest").get_json()
    assert manifest["author"] != manifest["name"] and manifest["author"] != "Klarna Order Management for Saleor"
    base = shop.settings.public_base
    texts = {}
    for key in ("homepageUrl", "supportUrl", "dataPrivacyUrl"):
        response = client.get(manifest[key].removeprefix(base) or "/")
        assert response.status_code == 200 and response.mimetype == "text/html", key
        texts[key] = response.get_data(as_text=True)
    assert f"{base}/api/manifest" in texts["homepageUrl"]
    assert "correlation id" in texts["supportUrl"]
    assert "For how long" in texts["dataPrivacyUrl"] and "does <strong>not</strong> store" in texts["dataPrivacyUrl"]
    favicon = client.get("/favicon.ico")
    assert favicon.status_code == 200 and favicon.data.startswith(b"\x89PNG")


def test_the_demo_runs_without_the_allowlist_warning(caplog: pytest.LogCaptureFixture) -> None:
    from plugin.demo import run

    lines: list[str] = []
    with caplog.at_level(logging.WARNING):
        run(echo=lines.append)
    assert any("Klarna performed" in line for line in lines)
    assert "ALLOWED_SALEOR_URLS" not in caplog.text


# -- order numbers in the dashboard ------------------------------------------------------------


def test_operations_and_exceptions_show_order_numbers_fetched_in_one_query(shop: Shop) -> None:
    from plugin.db.models import ProcessException

    shop.install()
    orders = []
    for number in (37, 38):
        klarna_id = shop.klarna.create_order(order_amount=5000, currency="USD")
        order_id = shop.saleor.create_order(
            lines=[{"name": "Scarf", "quantity": 2, "unit_gross": "25.00"}], klarna_order_id=klarna_id, number=number
        )
        shop.saleor.fulfill(order_id, {shop.saleor.order(order_id)["lines"][0]["id"]: 2})
        orders.append(order_id)
    shop.sync()
    with shop.services.db.transaction() as session:
        session.add(ProcessException(saleor_api_url=shop.saleor.api_url, order_id=orders[0], message="x", log="[]"))
    headers = {
        "authorization-bearer": shop.saleor.mint_token(user_permissions=("MANAGE_ORDERS", "MANAGE_APPS")),
        "saleor-api-url": shop.saleor.api_url,
    }
    client = shop.app.test_client()
    before = len(shop.saleor.graphql_requests)
    operations = client.get("/api/dashboard/operations", headers=headers).get_json()["operations"]
    asked = [r for r in shop.saleor.graphql_requests[before:] if "KlarnaOmOrderNumbers" in (r["query"] or "")]
    assert len(asked) == 1  # one query for the page, not one per row
    assert {(op["order_id"], op["order_number"]) for op in operations} == {(orders[0], "37"), (orders[1], "38")}
    exceptions = client.get("/api/dashboard/exceptions", headers=headers).get_json()["exceptions"]
    assert exceptions[0]["order_number"] == "37"
    exception_id = exceptions[0]["id"]
    dismissed = client.post(f"/api/dashboard/exceptions/{exception_id}/dismiss", headers=headers).get_json()
    assert dismissed["message"] == "Exception for order #37 dismissed"


def test_without_saleor_the_lists_keep_the_ids(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    from plugin.saleor.client import SaleorClient, SaleorError

    shop.install()
    klarna_id = shop.klarna.create_order(order_amount=5000, currency="USD")
    order_id = shop.saleor.create_order(lines=[{"name": "Scarf", "quantity": 1, "unit_gross": "50.00"}],
                                        klarna_order_id=klarna_id)  # fmt: skip
    shop.saleor.fulfill(order_id, {shop.saleor.order(order_id)["lines"][0]["id"]: 1})
    shop.sync()

    def down(self: SaleorClient, order_ids: list[str]) -> dict[str, str]:
        raise SaleorError("Saleor not reachable: ConnectionError")

    monkeypatch.setattr(SaleorClient, "order_numbers", down)
    headers = {
        "authorization-bearer": shop.saleor.mint_token(user_permissions=("MANAGE_ORDERS",)),
        "saleor-api-url": shop.saleor.api_url,
    }
    response = shop.app.test_client().get("/api/dashboard/operations", headers=headers)
    assert response.status_code == 200
    assert [(op["order_id"], op["order_number"]) for op in response.get_json()["operations"]] == [(order_id, None)]
