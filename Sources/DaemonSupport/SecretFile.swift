import Foundation

/// A secret kept in a file of its own (a password, a webhook key), never on a command line.
public enum SecretFile {
    /// The file's text without surrounding white space. Refused: a file others may read (mode
    /// & 077: anyone who can read it holds the secret), one that cannot be read, an empty one.
    /// - Parameter what: how the operator names it (`provider.webhook-secret-file`).
    public static func read(_ path: String, what: String) throws(SettingsError) -> String {
        var info = stat()
        guard stat(path, &info) == 0, let data = FileManager.default.contents(atPath: path) else {
            throw SettingsError(
                "cannot read \(what) \(path): \(String(cString: strerror(errno)))",
                hint: "write the secret there (openssl rand -hex 24 > \(path); chmod 600 \(path))")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw SettingsError(
                "\(what) \(path) may be read by other users (mode \(String(info.st_mode & 0o777, radix: 8)))",
                hint: "chmod 600 \(path)")
        }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !text.isEmpty else { throw SettingsError("\(what) \(path) is empty", hint: "write the secret there") }
        return text
    }
}
