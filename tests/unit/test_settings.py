from pathlib import Path

import pytest

from plugin.crypto import SecretBox
from plugin.settings import ConfigError, Settings


def test_embedded_default_generates_one_secret_and_keeps_it(tmp_path: Path) -> None:
    # given an empty instance folder and no secret in the environment
    env = {"KLARNA_APP_INSTANCE_PATH": str(tmp_path)}
    # when the settings are read twice
    first, second = Settings.from_env(env), Settings.from_env(env)
    # then one secret was generated, kept, and the database defaults to SQLite in the instance folder
    assert first.secret_keys == second.secret_keys and len(first.secret_keys[0]) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert first.database_url == f"sqlite:///{tmp_path / 'klarna-om.sqlite3'}"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {"KLARNA_APP_ENV": "production", "DATABASE_URL": "sqlite:///x"}, "SECRET_KEYS", id="prod-no-secret"
        ),
        pytest.param(
            {"KLARNA_APP_ENV": "production", "KLARNA_APP_SECRET_KEYS": "k" * 40}, "DATABASE_URL", id="prod-no-db"
        ),
        pytest.param({"KLARNA_APP_PUBLIC_URL": "ftp://x"}, "PUBLIC_URL", id="bad-public-url"),
        pytest.param({"KLARNA_APP_SECRET_KEYS": "short"}, "at least 32", id="short-secret"),
        pytest.param({"KLARNA_APP_LOG_LEVEL": "LOUD"}, "LOG_LEVEL", id="bad-log-level"),
        pytest.param({"KLARNA_APP_ALLOWED_SALEOR_URLS": "re:("}, "bad entry", id="bad-pattern"),
        pytest.param({"KLARNA_APP_ALLOWED_SALEOR_URLS": "re:https://(/x"}, "bad regular", id="bad-regex"),
        pytest.param(
            {
                "KLARNA_APP_ENV": "production",
                "DATABASE_URL": "sqlite:///x",
                "KLARNA_APP_SECRET_KEYS": "k" * 32,
                "KLARNA_APP_SALEOR_IP_FILTER": "0",
            },
            "ALLOWED_SALEOR_URLS",
            id="production-unfiltered-needs-allowlist",
        ),
        pytest.param(
            {
                "KLARNA_APP_ENV": "production",
                "DATABASE_URL": "sqlite:///x",
                "KLARNA_APP_SECRET_KEYS": "k" * 32,
                "KLARNA_APP_SALEOR_ALLOW_LOOPBACK": "1",
            },
            "local development",
            id="production-loopback-needs-allowlist",
        ),
        pytest.param({"KLARNA_APP_SALEOR_IP_FILTER": "maybe"}, "1 or 0", id="bad-bool"),
        pytest.param({"KLARNA_APP_METRICS_TOKEN": "short"}, "16 characters", id="short-metrics-token"),
        pytest.param({"KLARNA_APP_MAX_BODY_BYTES": "lots"}, "integer", id="bad-int"),
    ],
)
def test_invalid_environment_is_a_clear_start_up_error(tmp_path: Path, env: dict[str, str], message: str) -> None:
    # given an environment that does not describe a runnable app / when read / then a ConfigError names the problem
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"KLARNA_APP_INSTANCE_PATH": str(tmp_path), **env})


@pytest.mark.parametrize(
    ("allowlist", "url", "allowed"),
    [
        pytest.param("", "https://any.example/graphql/", True, id="empty-allows-any"),
        pytest.param("https://shop.example/graphql/", "https://shop.example/graphql/", True, id="exact"),
        pytest.param("https://shop.example/graphql/", "https://shop.example/graphql", True, id="trailing-slash"),
        pytest.param("https://shop.example/graphql", "https://SHOP.Example/graphql/", True, id="host-case"),
        pytest.param("https://shop.example/graphql/", "https://shop.example:443/graphql/", True, id="default-port"),
        pytest.param("https://shop.example/graphql/", "https://shop.example:8443/graphql/", False, id="other-port"),
        pytest.param("https://shop.example/graphql/", "http://shop.example/graphql/", False, id="other-scheme"),
        pytest.param("https://shop.example/graphql/", "https://shop.example/graphql/x", False, id="other-path"),
        pytest.param("https://shop.example/graphql/", "https://u:p@shop.example/graphql/", True, id="userinfo-ignored"),
        pytest.param(
            r"re:https://.*\.example\.com/graphql/",
            "https://evil.com/.example.com/graphql/",
            False,
            id="pattern-host-cannot-swallow-the-path",
        ),
        pytest.param(
            r"re:https://.*\.example\.com/graphql/",
            "https://x.example.com@evil.com/graphql/",
            False,
            id="pattern-userinfo-is-not-the-host",
        ),
        pytest.param(r"re:https://.*\.example\.com/graphql/", "https://A.Example.COM/graphql", True, id="pattern-case"),
        pytest.param(
            r"re:https://[a-z0-9-]+\.saleor\.cloud/graphql/",
            "https://my-shop.saleor.cloud/graphql/",
            True,
            id="pattern",
        ),
        pytest.param(
            r"re:https://[a-z0-9-]+\.saleor\.cloud/graphql/",
            "https://evil.example/?x=.saleor.cloud/graphql/",
            False,
            id="pattern-full-match",
        ),
    ],
)
def test_allowlist(tmp_path: Path, allowlist: str, url: str, allowed: bool) -> None:
    settings = Settings.from_env(
        {"KLARNA_APP_INSTANCE_PATH": str(tmp_path), "KLARNA_APP_ALLOWED_SALEOR_URLS": allowlist}
    )
    assert settings.saleor_url_allowed(url) is allowed


def test_secret_keys_rotate_first_encrypts_all_decrypt() -> None:
    # given a value encrypted under the old key
    old, new = "o" * 40, "n" * 40
    token = SecretBox((old,)).encrypt("Es1O0oB2O3PTeG9A4IVYUcaMoru3Ls")
    # when the new key is put first
    rotated = SecretBox((new, old))
    # then the old value still decrypts, and new values need the new key
    assert rotated.decrypt(token) == "Es1O0oB2O3PTeG9A4IVYUcaMoru3Ls"
    assert SecretBox((new,)).decrypt(rotated.encrypt("x")) == "x"
    assert "Es1O0oB2O3PTeG9A4IVYUcaMoru3Ls" not in token
    with pytest.raises(ValueError, match="no configured key"):
        SecretBox((new,)).decrypt(token)


def test_a_secret_decrypts_once_per_process_and_a_foreign_token_still_fails() -> None:
    # given a box and a token it encrypted
    box = SecretBox(("k" * 40,))
    token = box.encrypt("PK_secret")
    calls = []
    fernet_decrypt = box._fernet.decrypt
    box._fernet.decrypt = lambda data: calls.append(data) or fernet_decrypt(data)  # type: ignore[method-assign]  # counting
    # when the worker reads it for job after job
    plains = [box.decrypt(token) for _ in range(3)]
    # then it is decrypted once, and a token of another key is still refused
    assert plains == ["PK_secret"] * 3 and len(calls) == 1
    with pytest.raises(ValueError, match="no configured key"):
        box.decrypt(SecretBox(("z" * 40,)).encrypt("x"))
