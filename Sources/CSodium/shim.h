#ifndef PULSEBRIDGE_CSODIUM_SHIM_H
#define PULSEBRIDGE_CSODIUM_SHIM_H

// Only Ed25519 verification: libsodium's measures about twice as fast as OpenSSL 3's here
// (docs/benchmarks.md). Keys, signing and PEM stay with OpenSSL.
#include <sodium/core.h>
#include <sodium/crypto_sign.h>

#endif
