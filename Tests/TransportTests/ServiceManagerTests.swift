import Foundation
import Glibc
import PMFSMetadata
import Testing
import VhostUserFrontEnd

/// pmfsd under systemd's protocols, played by the test: a notification socket
/// (READY=1, WATCHDOG=1, STOPPING=1) and socket activation (the listening
/// socket as descriptor 3 with LISTEN_PID and LISTEN_FDS); and the unit files
/// as systemd-analyze reads them.
@Suite(.serialized) struct ServiceManagerTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// A datagram socket bound in `dir`, as systemd's NOTIFY_SOCKET.
    final class NotifySocket {
        let fd: Int32
        let path: String
        init(in dir: String) throws {
            path = dir + "/notify.sock"
            fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
            let rc = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            try #require(fd >= 0 && rc == 0)
        }
        deinit { close(fd) }
        /// Messages until one contains `line` (or `seconds` pass): whether it came.
        func waitFor(_ line: String, seconds: Int32 = 20) -> Bool {
            var buffer = [UInt8](repeating: 0, count: 4096)
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            while poll(&p, 1, seconds * 1000) == 1 {
                let n = recv(fd, &buffer, buffer.count, 0)
                guard n > 0 else { return false }
                if String(decoding: buffer[..<n], as: UTF8.self).split(separator: "\n").contains(Substring(line)) { return true }
            }
            return false
        }
    }

    func listeningSocket(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let rc = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        try #require(fd >= 0 && rc == 0 && listen(fd, 4) == 0)
        return fd
    }

    /// pmfsd started as systemd starts an activated service: `listener` as
    /// descriptor 3, LISTEN_PID naming pmfsd itself (the shell's pid, kept by exec).
    func spawnActivated(_ arguments: [String], listener: Int32, environment: [String: String]) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, listener, 3)
        let script = "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\" 2>\"$PMFS_TEST_LOG\""
        let argv = ["/bin/sh", "-c", script, ExportEndToEndTests.products + "/pmfsd"] + arguments
        let env = environment.map { "\($0.key)=\($0.value)" } + ["PATH=/usr/bin:/bin"]
        var cArgs = argv.map { strdup($0) } + [nil]
        var cEnv = env.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) }; cEnv.forEach { free($0) } }
        var pid: pid_t = 0
        // Not while another test thread is opening a pool (see PoolDescriptors).
        try #require(PoolDescriptors.withSpawnLock { posix_spawn(&pid, "/bin/sh", &actions, nil, &cArgs, &cEnv) } == 0)
        return pid
    }

    @Test func anActivatedDaemonNotifiesReadyWatchdogAndStoppingAndServesItsSocket() throws {
        let dir = "/dev/shm/pmfs-systemd-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let arguments = try ExportEndToEndTests.makeFileSystem(in: dir)
        let notify = try NotifySocket(in: dir)
        let listener = try listeningSocket(dir + "/guest.sock")
        let pid = try spawnActivated(arguments, listener: listener, environment: [
            "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000", "PMEM_IS_PMEM_FORCE": "1", "PMFS_TEST_LOG": dir + "/pmfsd.log",
        ])
        close(listener)
        var status: Int32 = -1
        defer { if status == -1 { kill(pid, SIGKILL); waitpid(pid, &status, 0) } }
        let log = { (try? String(contentsOfFile: dir + "/pmfsd.log", encoding: .utf8)) ?? "" }
        try #require(notify.waitFor("READY=1"), "no READY=1; pmfsd said: \(log())")
        #expect(notify.waitFor("WATCHDOG=1", seconds: 2))
        // The socket it was handed is a guest socket like --fd 3.
        let frontEnd = try VhostUserFrontEnd(socketPath: dir + "/guest.sock")
        let client = FUSEClient(frontEnd)
        _ = try client.initialize()
        #expect(try client.getattr(1).attr.ino == 1)
        kill(pid, SIGTERM)
        #expect(notify.waitFor("STOPPING=1"))
        withExtendedLifetime(frontEnd) {}
        waitpid(pid, &status, 0)
        #expect(status == 0, "pmfsd said: \(log())")
    }

    /// `systemctl reload` as the unit does it (SIGHUP to a daemon started with
    /// --config and an activated socket named `fd: 3` in the file): RELOADING=1,
    /// then READY=1; the file's other socket goes, the activated guest stays connected.
    @Test func aReloadNotifiesAndKeepsTheActivatedGuest() throws {
        let dir = "/dev/shm/pmfs-reload-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let made = try ExportEndToEndTests.makeFileSystem(in: dir)
        let head = "pool: \(made[1])\ndata: \(made[3])\nio-engine: threads\nguests:\n  vm1:\n    fd: 3\n    read-only: true\n"
        let config = dir + "/pmfs.yaml"
        try (head + "  extra:\n    socket: \(dir)/extra.sock\n").write(toFile: config, atomically: true, encoding: .utf8)
        let notify = try NotifySocket(in: dir)
        let listener = try listeningSocket(dir + "/guest.sock")
        let pid = try spawnActivated(["--config", config], listener: listener, environment: [
            "NOTIFY_SOCKET": notify.path, "PMEM_IS_PMEM_FORCE": "1", "PMFS_TEST_LOG": dir + "/pmfsd.log",
        ])
        close(listener)
        var status: Int32 = -1
        defer { if status == -1 { kill(pid, SIGKILL); waitpid(pid, &status, 0) } }
        let log = { (try? String(contentsOfFile: dir + "/pmfsd.log", encoding: .utf8)) ?? "" }
        try #require(notify.waitFor("READY=1"), "no READY=1; pmfsd said: \(log())")
        #expect(access(dir + "/extra.sock", F_OK) == 0)
        let frontEnd = try VhostUserFrontEnd(socketPath: dir + "/guest.sock")
        let client = FUSEClient(frontEnd)
        _ = try client.initialize()
        #expect(try client.getattr(1).attr.ino == 1)
        try (head + "log-level: debug\n").write(toFile: config, atomically: true, encoding: .utf8)
        kill(pid, SIGHUP)
        #expect(notify.waitFor("RELOADING=1"), "pmfsd said: \(log())")
        #expect(notify.waitFor("READY=1"), "pmfsd said: \(log())")
        #expect(access(dir + "/extra.sock", F_OK) != 0, "the dropped socket's path is gone")
        #expect(try client.getattr(1).attr.ino == 1, "the activated guest's session goes on")
        #expect(log().contains("configuration \(config) applied"), "\(log())")
        kill(pid, SIGTERM)
        #expect(notify.waitFor("STOPPING=1"))
        withExtendedLifetime(frontEnd) {}
        waitpid(pid, &status, 0)
        #expect(status == 0, "pmfsd said: \(log())")
    }

    /// The units as systemd reads them: no unknown directive, no bad value,
    /// an executable that exists (systemd-analyze verify warns or fails).
    @Test func theUnitsVerify() throws {
        let analyze = "/usr/bin/systemd-analyze"
        try #require(FileManager.default.isExecutableFile(atPath: analyze), "systemd-analyze is part of Debian's systemd package")
        let dir = "/dev/shm/pmfs-units-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for unit in ["pmfsd@.service", "pmfsd@.socket"] {
            let text = try String(contentsOfFile: Self.root + "/tools/systemd/" + unit, encoding: .utf8)
                .replacingOccurrences(of: "@BINDIR@", with: ExportEndToEndTests.products)
                .replacingOccurrences(of: "@DOCDIR@", with: Self.root)
            try text.write(toFile: dir + "/" + unit, atomically: true, encoding: .utf8)
        }
        try FileManager.default.createSymbolicLink(atPath: dir + "/pmfsd@vm1.service", withDestinationPath: dir + "/pmfsd@.service")
        try FileManager.default.createSymbolicLink(atPath: dir + "/pmfsd@vm1.socket", withDestinationPath: dir + "/pmfsd@.socket")
        let verify = Process()
        verify.executableURL = URL(fileURLWithPath: analyze)
        verify.arguments = ["verify", dir + "/pmfsd@vm1.service", dir + "/pmfsd@vm1.socket"]
        let errors = Pipe()
        verify.standardError = errors
        verify.standardOutput = errors
        try PoolDescriptors.withSpawnLock { try verify.run() }
        let said = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        verify.waitUntilExit()
        // Lines about the host's own units (not ours) are not our concern.
        let ours = said.split(separator: "\n").filter { $0.contains("pmfsd") }
        #expect(verify.terminationStatus == 0 && ours.isEmpty, "systemd-analyze verify: \(said)")
    }

    func runInstall(_ arguments: [String], destination: String) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [Self.root + "/tools/install.sh"] + arguments
        p.environment = ["DESTDIR": destination, "PATH": "/usr/bin:/bin"]
        p.standardOutput = FileHandle.nullDevice
        try PoolDescriptors.withSpawnLock { try p.run() }
        p.waitUntilExit()
        return p.terminationStatus
    }

    func files(under dir: String) -> Set<String> {
        Set((FileManager.default.enumerator(atPath: dir)?.allObjects as? [String] ?? []).filter {
            var isDirectory: ObjCBool = false
            return FileManager.default.fileExists(atPath: dir + "/" + $0, isDirectory: &isDirectory) && !isDirectory.boolValue
        })
    }

    @Test func installPutsEveryFileInPlaceAndUninstallRemovesExactlyThose() throws {
        let root = "/dev/shm/pmfs-install-\(getpid())"
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: root + "/usr/local/bin", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        // Someone else's file beside ours must stay.
        FileManager.default.createFile(atPath: root + "/usr/local/bin/other-tool", contents: Data("x".utf8))
        #expect(try runInstall(["--from", ExportEndToEndTests.products, "--no-man"], destination: root) == 0)
        let after = files(under: root)
        for expected in ["usr/local/bin/pmfsd", "usr/local/bin/pmfsctl", "usr/local/bin/mkfs.pmfs", "usr/local/bin/fsck.pmfs", "usr/local/bin/pmfs-inspect",
                         "etc/systemd/system/pmfsd@.service", "etc/systemd/system/pmfsd@.socket", "etc/pmfs/example.env", "etc/pmfs/example.yaml",
                         "usr/local/share/doc/pmfs/README.md", "usr/local/share/pmfs/installed-files",
                         "usr/local/share/qemu/vhost-user/50-pmfs.json"] {
            #expect(after.contains(expected), "\(expected) not installed")
        }
        let unit = try String(contentsOfFile: root + "/etc/systemd/system/pmfsd@.service", encoding: .utf8)
        #expect(unit.contains("ExecStart=/usr/local/bin/pmfsd --config /etc/pmfs/%i.yaml ") && !unit.contains("@BINDIR@"))
        #expect(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"))
        // QEMU's descriptor names the installed binary, as an fs back end.
        let descriptor = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root + "/usr/local/share/qemu/vhost-user/50-pmfs.json"))) as? [String: Any]
        #expect(descriptor?["type"] as? String == "fs" && descriptor?["binary"] as? String == "/usr/local/bin/pmfsd")
        #expect(try runInstall(["--uninstall"], destination: root) == 0)
        #expect(files(under: root) == ["usr/local/bin/other-tool"])
        #expect(try runInstall(["--uninstall"], destination: root) != 0)
    }
}
