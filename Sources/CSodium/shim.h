#ifndef PULSEBRIDGE_CSODIUM_SHIM_H
#define PULSEBRIDGE_CSODIUM_SHIM_H

// Ed25519 verification: libsodium's measures about twice as fast as OpenSSL 3's here
// (docs/benchmarks.md). Keys, signing and PEM stay with OpenSSL.
// Argon2id for the console's operator passwords (crypto_pwhash_str), and random bytes.
#include <sodium/core.h>
#include <sodium/crypto_sign.h>
#include <sodium/crypto_pwhash.h>
#include <sodium/randombytes.h>

#endif
