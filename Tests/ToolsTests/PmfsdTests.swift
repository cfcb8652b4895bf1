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

    /// Export options after --socket/--fd: a bad one is one line on stderr and
    /// exit 1, before any pool is opened.
    @Test(arguments: [
        (["--socket", "/tmp/x.sock,exprt=/a"], "--socket /tmp/x.sock,exprt=/a: unknown option 'exprt'"),
        (["--socket", "/tmp/x.sock,uid-map=0:100000"], "GUEST:HOST:COUNT"),
        (["--socket", "/tmp/x.sock,export=vms"], "absolute path"),
        (["--socket", "/tmp/x.sock,devices=yes"], "devices= must be allow or deny"),
        (["--fd", "three,export=/a"], "--fd three,export=/a: 'three' is not a descriptor number"),
        (["--fd", "3,read-only,read-only"], "given twice"),
    ])
    func badExportOptionsFailClearly(arguments: [String], message: String) throws {
        let s = try Scratch()
        let r = try Tool.run("pmfsd", ["--pool", s.path("fs.pool"), "--data", s.path("fs.data")] + arguments)
        expectFailure(r, tool: "pmfsd", mentioning: message)
    }

    /// The export directory must exist in the file system when pmfsd starts;
    /// the pool is closed cleanly (it opens again without recovery).
    @Test func missingExportDirectoryRefusesToStart() throws {
        let s = try Scratch()
        let pool = s.path("fs.pool"), data = s.path("fs.data")
        try mkfs(pool: pool, data: data, ["--data-size", "16M", "--quiet"])
        for (export, message) in [("/vms/vm1", "export=/vms/vm1: no such directory in the file system"),
                                  ("/lost+found/../x", "'.' and '..' are not allowed")] {
            let r = try Tool.run("pmfsd", ["--pool", pool, "--data", data, "--socket", s.path("vm.sock") + ",export=\(export)"])
            expectFailure(r, tool: "pmfsd", mentioning: message)
        }
        let info = try Tool.run("pmfs-inspect", ["info", "--pool", pool])
        #expect(info.status == 0, "\(info.stderr)")
        #expect(info.output.contains("state:            clean"), "\(info.output)")
    }
}
