#ifndef PULSEBRIDGE_COPENSSL_SHIM_H
#define PULSEBRIDGE_COPENSSL_SHIM_H

// Only libcrypto is needed: Ed25519 keys (EVP_PKEY), one-shot signing and
// verification (EVP_DigestSign/Verify), PEM for PKCS#8, SHA-256 and random bytes.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

// BIO_get_mem_data is a macro; Swift cannot import it.
static inline long pulsebridge_BIO_get_mem_data(BIO *bio, char **data) {
    return BIO_get_mem_data(bio, data);
}

#endif
