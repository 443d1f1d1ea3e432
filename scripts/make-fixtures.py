#!/usr/bin/env python3
"""Envelope fixtures made with an independent Ed25519 implementation (Python's
`cryptography`), for Tests/MessageSchemaTests. Deterministic: keys come from fixed seeds, so
re-running it rewrites the same file.

    python3 scripts/make-fixtures.py > Tests/MessageSchemaTests/Fixtures/envelopes.json
"""
import base64
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization


def key(seed_byte):
    return Ed25519PrivateKey.from_private_bytes(bytes([seed_byte]) * 32)


def pub_b64(k):
    raw = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


payment_key, fleet_key, stranger_key = key(1), key(2), key(3)
TRUST = [
    {"kid": "pay-2026-11", "purpose": "payment", "publicKey": pub_b64(payment_key)},
    {"kid": "fleet-1", "purpose": "fleet", "publicKey": pub_b64(fleet_key)},
]


def envelope(body_text, kid="pay-2026-11", signer=payment_key, sig=None, v=1):
    if sig is None:
        sig = base64.b64encode(signer.sign(body_text.encode("utf-8"))).decode()
    return json.dumps({"v": v, "kid": kid, "body": body_text, "sig": sig})


PAYMENT = {"type": "payment.completed", "paymentId": "p-20261129-000123", "machineId": "laundry-07",
           "amount": 400, "currency": "JPY", "userId": "u-5f3a9c", "issuedAt": 1764442800000,
           "expiresAt": 1764442830000}
CONFIG = {"type": "config", "machineId": "laundry-07", "version": 12, "issuedAt": 1764442700000,
          "currency": "JPY", "maxAmount": 5000, "heartbeatS": 30, "postVendDelayMs": 2000,
          "outputs": [
              {"channel": "coin", "chip": "gpiochip0", "line": 17, "activeLow": False,
               "valuePerPulse": 100, "pulseMs": 50, "gapMs": 50},
              {"channel": "bill", "chip": "gpiochip0", "line": 27, "activeLow": False,
               "valuePerPulse": 1000, "pulseMs": 100, "gapMs": 150}],
          "inhibit": {"chip": "gpiochip0", "line": 22, "activeLow": True},
          "trust": TRUST}


def body(base, **changes):
    b = dict(base)
    for k, v in changes.items():
        if v is Ellipsis:
            b.pop(k, None)
        else:
            b[k] = v
    return json.dumps(b)


cases = []


def case(name, kind, env, expect, field=None):
    c = {"name": name, "kind": kind, "envelope": env, "expect": expect}
    if field:
        c["field"] = field
    cases.append(c)


valid = body(PAYMENT)
case("valid payment", "payment", envelope(valid), "ok")
case("valid payment with unknown extra fields", "payment",
     envelope(body(PAYMENT, note="forward compatible", extra={"a": [1, 2]})), "ok")
case("non-ASCII user ID signed over its UTF-8 bytes", "payment",
     envelope(json.dumps(dict(PAYMENT, userId="ユーザー-7"), ensure_ascii=False)), "ok")
good_sig = json.loads(envelope(valid))["sig"]
case("body altered by one byte", "payment",
     envelope(valid.replace('"amount": 400', '"amount": 500'), sig=good_sig), "bad_signature")
case("signature by an untrusted key under an unknown kid", "payment",
     envelope(valid, kid="stranger", signer=stranger_key), "unknown_key")
case("signature by an untrusted key under a trusted kid", "payment",
     envelope(valid, signer=stranger_key), "bad_signature")
case("fleet key signing a payment", "payment", envelope(valid, kid="fleet-1", signer=fleet_key), "unknown_key")
case("signature not base64", "payment", envelope(valid, sig="not*base64!"), "malformed", "sig")
case("signature of 63 bytes", "payment",
     envelope(valid, sig=base64.b64encode(b"x" * 63).decode()), "malformed", "sig")
case("body that is not JSON", "payment", envelope("this is not json"), "malformed", "body")
case("envelope version 2", "payment", envelope(valid, v=2), "malformed", "v")
case("kid with a space", "payment", envelope(valid, kid="pay 2026"), "malformed", "kid")
case("envelope that is not JSON", "payment", "{\"v\":1,", "malformed")
case("envelope over 8 KiB", "payment", envelope(body(PAYMENT, pad="x" * 8300)), "malformed")

out_of_range = [
    ("amount 0", {"amount": 0}, "body.amount"),
    ("amount over 10,000,000", {"amount": 10_000_001}, "body.amount"),
    ("amount as a string", {"amount": "400"}, "body.amount"),
    ("amount with a fraction", {"amount": 400.5}, "body.amount"),
    ("amount missing", {"amount": ...}, "body.amount"),
    ("paymentId empty", {"paymentId": ""}, "body.paymentId"),
    ("paymentId with a slash", {"paymentId": "p/1"}, "body.paymentId"),
    ("paymentId of 129 characters", {"paymentId": "p" * 129}, "body.paymentId"),
    ("paymentId null", {"paymentId": None}, "body.paymentId"),
    ("machineId upper case", {"machineId": "Laundry-07"}, "body.machineId"),
    ("machineId with a wildcard", {"machineId": "laundry+07"}, "body.machineId"),
    ("machineId of one character", {"machineId": "l"}, "body.machineId"),
    ("userId empty", {"userId": ""}, "body.userId"),
    ("userId of 129 characters", {"userId": "u" * 129}, "body.userId"),
    ("userId with a control character", {"userId": "u\u0007x"}, "body.userId"),
    ("currency lower case", {"currency": "jpy"}, "body.currency"),
    ("currency of four letters", {"currency": "JPYX"}, "body.currency"),
    ("issuedAt negative", {"issuedAt": -1}, "body.issuedAt"),
    ("lifetime under 1 s", {"expiresAt": PAYMENT["issuedAt"] + 999}, "body.expiresAt"),
    ("lifetime over 600 s", {"expiresAt": PAYMENT["issuedAt"] + 600_001}, "body.expiresAt"),
    ("type of another message", {"type": "config"}, "body.type"),
]
for name, changes, field in out_of_range:
    case(name, "payment", envelope(body(PAYMENT, **changes)), "malformed", field)

valid_config = body(CONFIG)
case("valid config", "config", envelope(valid_config, kid="fleet-1", signer=fleet_key), "ok")
case("payment key signing a config", "config", envelope(valid_config), "unknown_key")
config_out_of_range = [
    ("pulseMs under 10", {"outputs": [dict(CONFIG["outputs"][0], pulseMs=9)]}, "body.outputs[0].pulseMs"),
    ("gapMs over 2000", {"outputs": [dict(CONFIG["outputs"][0], gapMs=2001)]}, "body.outputs[0].gapMs"),
    ("valuePerPulse 0", {"outputs": [dict(CONFIG["outputs"][0], valuePerPulse=0)]},
     "body.outputs[0].valuePerPulse"),
    ("no outputs", {"outputs": []}, "body.outputs"),
    ("nine outputs", {"outputs": [dict(CONFIG["outputs"][0], channel=f"c{i}") for i in range(9)]}, "body.outputs"),
    ("duplicate channels", {"outputs": [CONFIG["outputs"][0], CONFIG["outputs"][0]]}, "body.outputs"),
    ("heartbeatS 0", {"heartbeatS": 0}, "body.heartbeatS"),
    ("postVendDelayMs over 60000", {"postVendDelayMs": 60_001}, "body.postVendDelayMs"),
    ("maxAmount 0", {"maxAmount": 0}, "body.maxAmount"),
    ("trust without a fleet key", {"trust": TRUST[:1]}, "body.trust"),
    ("trust key not 32 bytes", {"trust": [dict(TRUST[1], publicKey="AAAA")]}, "body.trust[0].publicKey"),
]
for name, changes, field in config_out_of_range:
    case(name, "config", envelope(body(CONFIG, **changes), kid="fleet-1", signer=fleet_key), "malformed", field)
case("config with inhibit null and no trust", "config",
     envelope(body(CONFIG, inhibit=None, trust=...), kid="fleet-1", signer=fleet_key), "ok")

json.dump({"trust": TRUST, "cases": cases}, sys.stdout, indent=1, ensure_ascii=False)
sys.stdout.write("\n")
