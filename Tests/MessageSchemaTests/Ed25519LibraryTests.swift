import Foundation
import Testing

@testable import MessageSchema

/// Verification runs on libsodium (the payment path's fastest here); OpenSSL signs and stays the
/// reference. The two must agree on every signature a signer can make or an attacker can bend.
struct Ed25519LibraryTests {
    /// Random keys and messages: the right signature, and single-bit changes of the signature,
    /// the message and the key.
    @Test func libsodiumAgreesWithOpenSSL() throws {
        for round in 0..<12 {
            let key = try Ed25519PrivateKey()
            let other = try Ed25519PrivateKey()
            let message = Data((0..<(round * 37)).map { _ in UInt8.random(in: 0...255) })
            let signature = key.signature(for: message)
            let publicKey = key.publicKey
            #expect(publicKey.isValidSignature(signature, for: message))
            #expect(publicKey.isValidSignatureOpenSSL(signature, for: message))
            #expect(!other.publicKey.isValidSignature(signature, for: message))
            for bit in stride(from: round, to: 512, by: 11) {
                var bent = signature
                bent[bent.startIndex + bit / 8] ^= 1 << (bit % 8)
                #expect(publicKey.isValidSignature(bent, for: message) == publicKey.isValidSignatureOpenSSL(bent, for: message))
                #expect(!publicKey.isValidSignature(bent, for: message))
            }
            if !message.isEmpty {
                var bent = message
                bent[bent.startIndex + round % message.count] ^= 0x01
                #expect(!publicKey.isValidSignature(signature, for: bent))
                #expect(!publicKey.isValidSignatureOpenSSL(signature, for: bent))
            }
            #expect(!publicKey.isValidSignature(signature.prefix(63), for: message))
        }
    }

    /// A malleated signature (S + L, the same point equation) is refused by both, as RFC 8032
    /// requires (S must be below the group order).
    @Test func nonCanonicalSIsRefused() throws {
        let key = try Ed25519PrivateKey()
        let message = Data("payment".utf8)
        let signature = Array(key.signature(for: message))
        // L = 2^252 + 27742317777372353535851937790883648493, little-endian.
        let order: [UInt8] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ]
        var malleated = signature
        var carry = 0
        for i in 0..<32 {
            let sum = Int(signature[32 + i]) + Int(order[i]) + carry
            malleated[32 + i] = UInt8(sum & 0xff)
            carry = sum >> 8
        }
        #expect(carry == 0)  // S < L < 2^253, so S + L fits in 256 bits
        #expect(!key.publicKey.isValidSignature(malleated, for: message))
        #expect(!key.publicKey.isValidSignatureOpenSSL(malleated, for: message))
    }

    /// The identity point as a public key with R = identity, S = 0 satisfies the cofactorless
    /// equation for every message. libsodium refuses small-order keys outright.
    @Test func smallOrderKeyForgesNothing() throws {
        var identity = [UInt8](repeating: 0, count: 32)
        identity[0] = 1
        let key = try Ed25519PublicKey(rawRepresentation: Data(identity))
        let forged = Data(identity + [UInt8](repeating: 0, count: 32))
        #expect(!key.isValidSignature(forged, for: Data("any payment".utf8)))
        #expect(!key.isValidSignature(forged, for: Data()))
    }
}
