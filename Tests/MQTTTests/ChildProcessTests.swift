import Foundation
import LocalServices
import Testing

/// Child processes start clean: no signal mask, no descriptors of ours beyond 0–2.
struct ChildProcessTests {
    /// A file this process has open (without O_CLOEXEC, as a write in progress on another
    /// thread may) is not open in a child: otherwise the child would keep it open for its whole
    /// life, and exec'ing that file would fail with "Text file busy" (ETXTBSY).
    @Test func aChildInheritsNoDescriptorOfOurs() async throws {
        let path = NSTemporaryDirectory() + "pb-fd-\(UUID().uuidString)"
        let fd = open(path, O_WRONLY | O_CREAT, 0o600)  // deliberately without O_CLOEXEC
        #expect(fd > 2)
        defer {
            close(fd)
            unlink(path)
        }
        let child = try ChildProcess.spawn(
            "/bin/sh", ["-c", "if [ -e /proc/$$/fd/\(fd) ]; then echo inherited; else echo closed; fi"], outputPath: path + ".out")
        #expect(await child.waitForExit() == .exited(0))
        #expect(child.output().trimmingCharacters(in: .whitespacesAndNewlines) == "closed")
        unlink(path + ".out")
    }
}
