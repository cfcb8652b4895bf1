import Foundation
import Glibc
import Testing

@Suite struct PmfsdTests {
    /// A daemon that cannot start says so on stderr and exits non-zero, so a
    /// service manager or script notices (it once printed to stdout and exited 0).
    @Test func missingPoolFailsOnStderrWithNonZeroStatus() throws {
        let s = try Scratch()
        let r = try Tool.run("pmfsd", ["--pool", s.path("absent.pool"), "--data", s.path("absent.data"),
                                       "--socket", s.path("vhost.sock")])
        #expect(r.status == 1, "exit status \(r.status), stderr: \(r.stderr)")
        #expect(r.stdout.isEmpty, "stdout: \(r.output)")
        #expect(r.stderr.contains("pmfsd: "), "stderr: \(r.stderr)")
    }
}
