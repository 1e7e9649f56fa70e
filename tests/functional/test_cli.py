"""The klarna-om command line against a real database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from plugin.cli import main
from plugin.db.models import Operation
from tests.conftest import SECRET
from tests.functional.shop import Shop


@pytest.fixture
def cli_env(shop: Shop, tmp_path: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": shop.settings.database_url,
        "KLARNA_APP_SECRET_KEYS": SECRET,
        "KLARNA_APP_INSTANCE_PATH": str(tmp_path / "cli-instance"),
        "KLARNA_APP_LOG_LEVEL": "ERROR",
    }


def test_settings_export_leaves_secrets_out_and_import_round_trips(
    shop: Shop, cli_env: dict[str, str], tmp_path: Path
) -> None:
    shop.install()
    runner = CliRunner()
    exported = runner.invoke(main, ["settings", "export"], env=cli_env)
    assert exported.exit_code == 0, exported.output
    doc = json.loads(exported.output)
    assert "secret" not in exported.output and doc["channels"][0]["password_set"] is True
    # when the mapping is changed in the file and imported
    doc["channels"][0]["mapping"]["PARTIALLY_FULFILLED"] = "none"
    doc["channels"].append(
        {"channel": "eu-channel", "region": "EU", "environment": "live", "username": "PK_eu", "password": "pw"}
    )
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(doc))
    imported = runner.invoke(main, ["settings", "import", str(path)], env=cli_env)
    assert imported.exit_code == 0, imported.output
    # then the stored password survived, the new channel exists, the mapping changed
    with shop.services.db.transaction() as session:
        star = shop.services.store.get_exact(session, shop.saleor.api_url, "*")
        eu = shop.services.store.get_exact(session, shop.saleor.api_url, "eu-channel")
    assert star is not None and star.password == "secret" and star.mapping["PARTIALLY_FULFILLED"].value == "none"
    assert eu is not None and (eu.environment, eu.password) == ("live", "pw")


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        pytest.param({"channel": "*", "mapping": {"UNFULFILLED": "refund"}}, "makes no sense", id="nonsense-mapping"),
        pytest.param({"channel": "*", "region": "XX"}, "region", id="bad-region"),
        pytest.param({"channel": "*", "options": {"shipping_with": "middle"}}, "first or last", id="bad-option"),
    ],
)
def test_settings_import_validates_and_stores_nothing_on_error(
    shop: Shop, cli_env: dict[str, str], tmp_path: Path, channel: dict, message: str
) -> None:  # type: ignore[type-arg]  # JSON channel from the parametrize table
    shop.install()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"channels": [channel]}))
    result = CliRunner().invoke(main, ["settings", "import", str(path)], env=cli_env)
    assert result.exit_code != 0 and message in result.output
    with shop.services.db.transaction() as session:
        assert shop.services.store.get_exact(session, shop.saleor.api_url, "*").region == "EU"  # type: ignore[union-attr]  # the row exists: it was stored before the failed import


def test_ops_list_and_retry_after_giving_up(shop: Shop, cli_env: dict[str, str]) -> None:
    # given a capture that kept failing with 5xx past the retry budget
    shop.install()
    order_id, _kid = shop.order()
    tee, shoe = shop.line_ids(order_id)
    shop.klarna.inject("500", times=50, path_contains="/captures", method="POST")
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    shop.sync()
    [exception] = shop.exceptions()
    # giving up says what is not done, with Klarna's words once, and leaves the capture pending
    assert exception.error_code == "SYNC_FAILED" and "could not be synced after" in exception.message
    assert "not done in Klarna: the capture of 130.00 USD" in exception.message
    [failure_note] = shop.saleor.notes(order_id)
    assert "press Retry" in failure_note and failure_note.count("correlation_id") == 1
    runner = CliRunner()
    listed = runner.invoke(main, ["ops", "list"], env=cli_env)
    assert f"#{exception.id} [open]" in listed.output
    old_key = shop.operations()[0].idempotency_key
    # when Klarna recovers and the operator retries
    shop.klarna._faults.clear()
    retried = runner.invoke(main, ["ops", "retry", str(exception.id)], env=cli_env)
    assert retried.exit_code == 0, retried.output
    shop.sync()
    # then one capture, under the key Klarna never performed (5xx), and the exception resolved itself
    assert shop.performed("captures") == 1
    with shop.services.db.transaction() as session:
        op = session.scalars(select(Operation)).one()
        assert op.state == "succeeded" and op.idempotency_key == old_key
    assert [e.state for e in shop.exceptions()] == ["resolved"]
    notes = shop.saleor.notes(order_id)
    assert "could not be synced" in notes[0] and "captured 130.00 USD" in notes[-1]


def test_worker_and_gunicorn_entry_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'new.sqlite3'}",
        "KLARNA_APP_SECRET_KEYS": SECRET,
        "KLARNA_APP_INSTANCE_PATH": str(tmp_path),
    }
    result = CliRunner().invoke(main, ["worker"], env=env)
    assert result.exit_code != 0 and "klarna-om db upgrade" in result.output
    upgraded = CliRunner().invoke(main, ["db", "upgrade"], env=env)
    assert upgraded.exit_code == 0 and "database at" in upgraded.output
