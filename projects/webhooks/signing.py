"""The Standard Webhooks signature scheme (https://www.standardwebhooks.com/), without Django.

A secret is ``whsec_`` followed by the base64 of random bytes; the key is those bytes. A request carries
``webhook-id`` (the message id, the same on every retry), ``webhook-timestamp`` (Unix seconds of this
attempt) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``, one per
secret that is valid now, separated by spaces (two while a secret is being rotated). svix's
``Webhook(secret).verify(body, headers)`` and the other Standard Webhooks libraries check it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret; ``ValueError`` when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def sign(secret: str, *, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<signature>`` of ``body`` sent as ``message_id`` at ``timestamp``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(*, message_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every secret in ``secrets``."""
    if not secrets:
        raise ValueError("at least one secret signs a webhook")
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, message_id=message_id, timestamp=timestamp, body=body)
                                      for s in secrets),
    }


def mask(secret: str) -> str:
    """What a page may show of a secret once it was shown: its first characters."""
    return secret[: len(SECRET_PREFIX) + 4] + "…" if secret else ""
