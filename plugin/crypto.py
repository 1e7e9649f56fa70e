"""Encryption of secrets at rest with rotating keys (the first key encrypts, all keys decrypt)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

DECRYPTED_KEPT = 1024  # secrets kept decrypted per process (installations' tokens and credentials)


class SecretBox:
    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ValueError("at least one key is required")
        self._fernet = MultiFernet([Fernet(_derive(key)) for key in keys])
        # token -> plaintext: the worker reads the same installation's token and credentials for
        # every job; a Fernet token always decrypts to the same text, so it is decrypted once.
        self._plain: dict[str, str] = {}

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        plain = self._plain.get(token)
        if plain is not None:
            return plain
        try:
            plain = self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError("cannot decrypt: no configured key matches") from None
        if len(self._plain) >= DECRYPTED_KEPT:
            self._plain.clear()
        self._plain[token] = plain
        return plain

    def rotate(self, token: str) -> str:
        """Re-encrypt ``token`` under the first key."""
        return self._fernet.rotate(token.encode()).decode()


def _derive(key: str) -> bytes:
    # Any string of 32+ characters is accepted as a key; Fernet needs 32 url-safe base64 bytes.
    return base64.urlsafe_b64encode(hashlib.sha256(b"klarna-om-secret-box:" + key.encode()).digest())
