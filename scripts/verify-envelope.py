#!/usr/bin/env python3
"""Verifies a PulseBridge signed envelope with Python's `cryptography` (an Ed25519
implementation independent of OpenSSL-through-Swift).

    python3 scripts/verify-envelope.py ENVELOPE_FILE PUBLIC_KEY_BASE64
Exit 0 and prints the body when the signature verifies; exit 1 when it does not.
"""
import base64
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

envelope = json.load(open(sys.argv[1], encoding="utf-8"))
key = Ed25519PublicKey.from_public_bytes(base64.b64decode(sys.argv[2]))
try:
    key.verify(base64.b64decode(envelope["sig"]), envelope["body"].encode("utf-8"))
except InvalidSignature:
    print("bad signature", file=sys.stderr)
    sys.exit(1)
print(envelope["body"])
