#!/usr/bin/env python3
"""Verifies a reviews webhook delivery the Standard Webhooks way, with Python's standard
library only (the receiver's guide in docs/WEBHOOKS.md explains each step).

Usage: verify_webhook.py SECRET WEBHOOK_ID WEBHOOK_TIMESTAMP WEBHOOK_SIGNATURE < BODY
Exits 0 when the signature is valid and the timestamp is within 5 minutes, 1 otherwise.
"""
import base64
import hashlib
import hmac
import sys
import time

TOLERANCE_SECONDS = 5 * 60


def verify(secret: str, msg_id: str, timestamp: str, signature_header: str, body: bytes) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        return False  # too old or from the future: a replay
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    # The header may carry several space-separated signatures (during a secret rotation).
    for candidate in signature_header.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


if __name__ == "__main__":
    secret, msg_id, timestamp, signature = sys.argv[1:5]
    sys.exit(0 if verify(secret, msg_id, timestamp, signature, sys.stdin.buffer.read()) else 1)
