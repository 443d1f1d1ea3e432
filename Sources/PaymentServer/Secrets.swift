import Foundation
import MessageSchema

enum RandomToken {
    private static let alphabet = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)
    /// `bits` of randomness from the system generator, base32 (lower case).
    static func make(bits: Int = 130) -> String {
        var generator = SystemRandomNumberGenerator()
        let count = (bits + 4) / 5
        return String(decoding: (0..<count).map { _ in alphabet[Int.random(in: 0..<32, using: &generator)] }, as: UTF8.self)
    }
}
