#!/usr/bin/env python3
"""Verifies a reviews webhook delivery the Standard Webhooks way, with Python's standard
library only (the receiver's guide in docs/WEBHOOKS.md explains each step).

Usage: verify_webhook.py SECRET WEBHOOK_ID WEBHOOK_TIMESTAMP WEBHOOK_SIGNATURE < BODY
Exits 0 when the signature is valid and the timestamp is within 5 minutes; otherwise prints
why it is invalid and exits 1 (a mistyped secret or timestamp is invalid, not a crash).
"""
import base64
import binascii
import hashlib
import hmac
import sys
import time

TOLERANCE_SECONDS = 5 * 60


class Invalid(Exception):
    """Why a delivery does not verify."""


def verify(secret: str, msg_id: str, timestamp: str, signature_header: str, body: bytes) -> bool:
    try:
        check(secret, msg_id, timestamp, signature_header, body)
        return True
    except Invalid:
        return False


def check(secret: str, msg_id: str, timestamp: str, signature_header: str, body: bytes) -> None:
    """Raises Invalid with the reason unless the delivery verifies."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("the secret is not 'whsec_' followed by base64 (mistyped?)")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise Invalid(f"the timestamp {timestamp!r} is not Unix seconds")
    if abs(time.time() - sent_at) > TOLERANCE_SECONDS:
        raise Invalid("the timestamp is more than 5 minutes away: a replay, or a wrong clock")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    # The header may carry several space-separated signatures (during a secret rotation).
    for candidate in signature_header.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise Invalid("no signature matches: a wrong secret, or a changed body")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    secret, msg_id, timestamp, signature = sys.argv[1:5]
    try:
        check(secret, msg_id, timestamp, signature, sys.stdin.buffer.read())
    except Invalid as reason:
        print(f"invalid: {reason}", file=sys.stderr)
        sys.exit(1)
