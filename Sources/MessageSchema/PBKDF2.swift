internal import COpenSSL

/// PBKDF2 (RFC 8018) with HMAC-SHA-512, over OpenSSL: the password hashes mosquitto's
/// `password_file` accepts (`$7$`, what `mosquitto_passwd` writes).
public enum PBKDF2 {
    /// The derived key of `length` bytes.
    public static func sha512(password: some Collection<UInt8>, salt: [UInt8], iterations: Int, length: Int = 64) -> [UInt8] {
        let password = Array(password)
        var out = [UInt8](repeating: 0, count: length)
        let ok = password.withUnsafeBufferPointer { pw in
            salt.withUnsafeBufferPointer { s in
                pw.withMemoryRebound(to: CChar.self) { pwChars in
                    PKCS5_PBKDF2_HMAC(
                        pwChars.baseAddress, Int32(pw.count), s.baseAddress, Int32(s.count), Int32(iterations), EVP_sha512(),
                        Int32(length), &out)
                }
            }
        }
        precondition(ok == 1, "PKCS5_PBKDF2_HMAC failed")
        return out
    }
}
