"""The app's own verifier over the real Saleor 3.23 traffic in ../shared (skipped when absent)."""

from pathlib import Path

import pytest

from plugin.saleor import jws
from tests.conftest import require_samples


def _parse_http(path: Path) -> tuple[dict[str, str], bytes]:
    head, _, body = path.read_bytes().partition(b"\n\n")
    headers = {}
    for line in head.decode("latin-1").split("\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, body


def _samples() -> list[Path]:
    samples = require_samples()
    found = sorted(samples.glob("*-webhook-*.http"))
    assert found, "no webhook samples"
    return found


def test_every_real_webhook_verifies() -> None:
    jwks = (require_samples() / "jwks.json").read_text()
    for path in _samples():
        headers, body = _parse_http(path)
        assert jws.verify_detached(headers["saleor-signature"], body, jwks), path.name


def test_one_changed_body_byte_never_verifies() -> None:
    jwks = (require_samples() / "jwks.json").read_text()
    for path in _samples():
        headers, body = _parse_http(path)
        for index in (0, len(body) // 2, len(body) - 1):
            forged = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
            with pytest.raises(jws.BadSignature):
                jws.verify_detached(headers["saleor-signature"], forged, jwks)


def test_real_dashboard_tokens_verify_but_are_expired() -> None:
    samples = require_samples()
    jwks = (samples / "jwks.json").read_text()
    for path in samples.glob("*.jwt"):
        with pytest.raises(jws.BadSignature, match="expired"):
            jws.verify_jwt(path.read_text().strip(), jwks)


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param("", id="empty"),
        pytest.param("a.b.c", id="attached"),
        pytest.param("!!..!!", id="not-base64"),
        pytest.param("eyJhbGciOiJIUzI1NiJ9..c2ln", id="hs256"),
        pytest.param("eyJhbGciOiJSUzI1NiJ9..c2ln", id="b64-true"),
    ],
)
def test_malformed_signatures_are_rejected(signature: str) -> None:
    with pytest.raises(jws.SignatureError):
        jws.verify_detached(signature, b"{}", '{"keys": []}')
