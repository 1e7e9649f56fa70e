"""Saleor's signatures: the detached RS256 JWS on webhooks and the RS256 JWT of the dashboard.

Both are checked against the installation's stored JWKS. Callers refetch the JWKS once when
verification fails with :class:`UnknownKey` or :class:`BadSignature` (Saleor rotates by
replacing its only key), see ``webhooks`` and ``dashboard_ext``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm


class SignatureError(Exception):
    """The request is not provably from the installation's Saleor."""


class MalformedSignature(SignatureError):
    pass


class UnknownKey(SignatureError):
    pass


class BadSignature(SignatureError):
    pass


def b64url_decode(data: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        raise MalformedSignature("not base64url") from None


@functools.lru_cache(maxsize=64)
def public_keys(jwks_text: str) -> dict[str, rsa.RSAPublicKey]:
    """The RSA verification keys of a JWKS document, by kid (memoized: the text is the key)."""
    try:
        doc = json.loads(jwks_text)
        keys = {}
        for jwk in doc.get("keys", []):
            if jwk.get("kty") == "RSA" and "kid" in jwk:
                key = RSAAlgorithm.from_jwk(jwk)
                if isinstance(key, rsa.RSAPublicKey):
                    keys[jwk["kid"]] = key
        return keys
    except (ValueError, TypeError, AttributeError, jwt.InvalidKeyError):
        return {}


def valid_jwks(text: str) -> bool:
    return bool(public_keys(text))


def verify_detached(signature: str, body: bytes, jwks_text: str) -> str:
    """Verify Saleor's detached JWS (RFC 7797, b64=false) over the raw ``body``; return the kid."""
    parts = signature.split(".")
    if len(parts) != 3 or parts[1] != "" or not parts[0] or not parts[2]:
        raise MalformedSignature("expected <header>..<signature>")
    header_b64, _, sig_b64 = parts
    try:
        header = json.loads(b64url_decode(header_b64))
    except ValueError:
        raise MalformedSignature("header is not JSON") from None
    if not isinstance(header, dict) or header.get("alg") != "RS256":
        raise MalformedSignature("alg must be RS256")
    if header.get("b64") is not False or "b64" not in header.get("crit", []):
        raise MalformedSignature("expected an unencoded (b64=false) payload")
    kid = header.get("kid")
    key = public_keys(jwks_text).get(kid) if isinstance(kid, str) else None
    if key is None or not isinstance(kid, str):
        raise UnknownKey(f"no key {kid!r} in the JWKS")
    try:
        key.verify(b64url_decode(sig_b64), header_b64.encode() + b"." + body, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise BadSignature("signature does not match the body") from None
    return kid


def verify_jwt(token: str, jwks_text: str) -> dict[str, Any]:
    """Verify a dashboard JWT (RS256, exp required, no audience check as in app-sdk); return its claims."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise MalformedSignature("not a JWT") from None
    if header.get("alg") != "RS256":
        raise MalformedSignature("alg must be RS256")
    key = public_keys(jwks_text).get(header.get("kid", ""))
    if key is None:
        raise UnknownKey("no key for the token's kid")
    try:
        return jwt.decode(token, key, algorithms=["RS256"], options={"require": ["exp"], "verify_aud": False})
    except jwt.ExpiredSignatureError:
        raise BadSignature("token expired") from None
    except jwt.InvalidSignatureError:
        raise BadSignature("token signature invalid") from None
    except jwt.InvalidTokenError as exc:
        raise MalformedSignature(str(exc)) from None
