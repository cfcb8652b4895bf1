import CFUSE
import Foundation
import Glibc
import PMFSMetadata
import Testing
import VhostUserFrontEnd

/// pmfsd itself, with a real pool, serving guest sockets with exports; the
/// VhostUserFrontEnd plays QEMU and the guest's virtiofs driver.
@Suite(.serialized) struct ExportEndToEndTests {
    /// The built executables sit beside the test binary.
    static let products: String = {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let exe = String(decoding: buffer[..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return (exe as NSString).deletingLastPathComponent
    }()

    final class Daemon {
        let process = Process()
        let log: URL
        init(_ arguments: [String], log: URL) throws {
            self.log = log
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            process.executableURL = URL(fileURLWithPath: ExportEndToEndTests.products + "/pmfsd")
            process.arguments = arguments
            var env = ProcessInfo.processInfo.environment
            env["PMEM_IS_PMEM_FORCE"] = "1"
            process.environment = env
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = FileHandle.nullDevice
            process.standardError = try FileHandle(forWritingTo: log)
            // Not while another test thread is opening a pool (see PoolDescriptors).
            try PoolDescriptors.withSpawnLock { try process.run() }
        }
        /// SIGTERM and the exit status; the daemon's log.
        func stop() -> (status: Int32, log: String) {
            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
            return (process.terminationStatus, (try? String(contentsOf: log, encoding: .utf8)) ?? "")
        }
    }

    /// A new 64 MiB file system in `dir` (mkfs.pmfs): pmfsd's arguments for it.
    static func makeFileSystem(in dir: String) throws -> [String] {
        let pool = dir + "/fs.pool", data = dir + "/fs.data"
        let mkfs = Process()
        mkfs.executableURL = URL(fileURLWithPath: products + "/mkfs.pmfs")
        mkfs.arguments = ["--pool", pool, "--data", data, "--data-size", "64M", "--quiet"]
        mkfs.environment = ["PMEM_IS_PMEM_FORCE": "1"]
        try PoolDescriptors.withSpawnLock { try mkfs.run() }
        mkfs.waitUntilExit()
        try #require(mkfs.terminationStatus == 0)
        return ["--pool", pool, "--data", data, "--io-engine", "threads"]
    }

    func connect(_ socket: String) throws -> (VhostUserFrontEnd, FUSEClient) {
        let frontEnd = try VhostUserFrontEnd(socketPath: socket)
        let client = FUSEClient(frontEnd)
        _ = try client.initialize()
        return (frontEnd, client)
    }

    func errno(_ body: () throws -> Void) -> Int32 {
        do { try body(); return 0 } catch let f as FUSEClient.Failure { return f.errno } catch { return -1 }
    }

    @Test func aGuestSocketWithAnExportSeesOnlyItsExport() throws {
        let dir = "/dev/shm/pmfs-export-e2e-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let common = try Self.makeFileSystem(in: dir)

        // First the whole tree, through a plain guest socket: /vms/vm1/inside and /secret.
        var ids: (vm1: UInt64, inside: UInt64, secret: UInt64) = (0, 0, 0)
        let first = try Daemon(common + ["--socket", dir + "/all.sock"], log: URL(fileURLWithPath: dir + "/first.log"))
        do {
            let (frontEnd, client) = try connect(dir + "/all.sock")
            let vms = try client.mkdir(parent: 1, "vms").nodeid
            ids.vm1 = try client.mkdir(parent: vms, "vm1").nodeid
            let inside = try client.create(parent: ids.vm1, "inside")
            try client.release(inside.entry.nodeid, handle: inside.handle)
            ids.inside = inside.entry.nodeid
            let secret = try client.create(parent: 1, "secret")
            try client.release(secret.entry.nodeid, handle: secret.handle)
            ids.secret = secret.entry.nodeid
            withExtendedLifetime(frontEnd) {}
        }
        let firstRun = first.stop()
        try #require(firstRun.status == 0, "\(firstRun.log)")

        // Then one export read-write with id maps, one read-only, of /vms/vm1,
        // and the host mount, which keeps the whole tree.
        let mountPoint = dir + "/mnt"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: false)
        let second = try Daemon(common + ["--mount", mountPoint,
                                          "--socket", dir + "/vm1.sock,export=/vms/vm1,uid-map=0:100000:65536,gid-map=0:200000:65536",
                                          "--socket", dir + "/ro.sock,export=/vms/vm1,read-only"],
                                log: URL(fileURLWithPath: dir + "/second.log"))
        do {
            let (frontEnd, client) = try connect(dir + "/vm1.sock")
            #expect(try client.getattr(1).attr.ino == 1)
            #expect(try client.lookup(parent: 1, "inside").nodeid == ids.inside)
            #expect(errno { _ = try client.lookup(parent: 1, "secret") } == ENOENT)
            #expect(errno { _ = try client.lookup(parent: 1, "vm1") } == ENOENT)
            #expect(try client.lookup(parent: 1, "..").nodeid == 1)
            // Numbers of inodes outside, or of the export directory itself, name nothing.
            #expect(errno { _ = try client.getattr(ids.secret) } == EBADF)
            #expect(errno { _ = try client.getattr(ids.vm1) } == EBADF)
            #expect(errno { _ = try client.lookup(parent: ids.secret, "x") } == EBADF)
            // LINK of an outside inode into the export, RENAME out of it by number.
            var link = fuse_link_in()
            link.oldnodeid = ids.secret
            #expect(errno { try client.call(FUSE_LINK, nodeid: 1, FUSEClient.bytes(link) + FUSEClient.name("stolen")) } == EBADF)
            var rename = fuse_rename_in()
            rename.newdir = 1   // a name ".." in the root cannot move anything out
            #expect(errno { try client.call(FUSE_RENAME, nodeid: 1, FUSEClient.bytes(rename) + FUSEClient.name("inside") + FUSEClient.name("..")) } != 0)
            for outside in [ids.vm1, ids.secret, ids.vm1 &- 1] {
                rename.newdir = outside
                #expect(errno { try client.call(FUSE_RENAME, nodeid: 1, FUSEClient.bytes(rename) + FUSEClient.name("inside") + FUSEClient.name("out")) } == EBADF)
            }
            #expect(try client.lookup(parent: 1, "inside").nodeid == ids.inside)
            #expect(try client.lookup(parent: 1, "inside").attr.uid == 65534)   // host root is outside the map
            let made = try client.mkdir(parent: 1, "made")
            #expect(made.attr.uid == 0 && made.attr.gid == 0)
            var st = stat()
            #expect(stat(mountPoint + "/vms/vm1/made", &st) == 0 && st.st_uid == 100_000 && st.st_gid == 200_000)
            #expect(stat(mountPoint + "/secret", &st) == 0)

            let (roFrontEnd, readOnly) = try connect(dir + "/ro.sock")
            #expect(errno { _ = try readOnly.mkdir(parent: 1, "refused") } == EROFS)
            #expect(errno { _ = try readOnly.open(try readOnly.lookup(parent: 1, "inside").nodeid, flags: UInt32(O_WRONLY)) } == EROFS)
            #expect(try readOnly.lookup(parent: 1, "made").attr.uid == 100_000)   // no map: host ids as they are
            withExtendedLifetime((frontEnd, roFrontEnd)) {}
        }
        let secondRun = second.stop()
        #expect(secondRun.status == 0, "\(secondRun.log)")
        #expect(secondRun.log.contains("export /vms/vm1, read-only"), "\(secondRun.log)")
        #expect(secondRun.log.contains("export /vms/vm1, uid map 0:100000:65536, gid map 0:200000:65536"), "\(secondRun.log)")
    }

    /// A clone made with pmfsctl snapshot is a directory like any other: served
    /// as a guest's export, its writes land in the clone; the base is unchanged.
    @Test func aCloneServedAsAnExportTakesWritesTheBaseDoesNotSee() throws {
        let dir = "/dev/shm/pmfs-clone-export-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let common = try Self.makeFileSystem(in: dir)
        let mountPoint = dir + "/mnt", control = dir + "/control.sock"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: false)
        let image = (0..<(256 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 13) }

        // The base image through the host mount, then its clone.
        let first = try Daemon(common + ["--mount", mountPoint, "--control", control], log: URL(fileURLWithPath: dir + "/first.log"))
        try Self.waitFor(control)
        try FileManager.default.createDirectory(atPath: mountPoint + "/base/etc", withIntermediateDirectories: true)
        try Data(image).write(to: URL(fileURLWithPath: mountPoint + "/base/disk"))
        try Data("base\n".utf8).write(to: URL(fileURLWithPath: mountPoint + "/base/etc/hostname"))
        let ctl = Process()
        ctl.executableURL = URL(fileURLWithPath: Self.products + "/pmfsctl")
        ctl.arguments = ["snapshot", "base", "vm1", "--control", control]
        try PoolDescriptors.withSpawnLock { try ctl.run() }
        ctl.waitUntilExit()
        try #require(ctl.terminationStatus == 0)
        let firstRun = first.stop()
        try #require(firstRun.status == 0, "\(firstRun.log)")

        // The clone as a guest's export (export=/vm1), the base on the host mount.
        let second = try Daemon(common + ["--mount", mountPoint, "--socket", dir + "/vm1.sock,export=/vm1"],
                                log: URL(fileURLWithPath: dir + "/second.log"))
        do {
            let (frontEnd, client) = try connect(dir + "/vm1.sock")
            let disk = try client.lookup(parent: 1, "disk").nodeid
            let handle = try client.open(disk, flags: UInt32(O_RDWR))
            #expect(try client.read(disk, handle: handle, offset: 4096, size: 4096) == Array(image[4096..<8192]))
            #expect(try client.write(disk, handle: handle, offset: 4096 + 100, Array(repeating: 0xEE, count: 5000)) == 5000)
            try client.fsync(disk, handle: handle)
            try client.release(disk, handle: handle)
            let etc = try client.lookup(parent: 1, "etc").nodeid
            let name = try client.create(parent: etc, "hostname.new")
            _ = try client.write(name.entry.nodeid, handle: name.handle, offset: 0, Array("vm1\n".utf8))
            try client.release(name.entry.nodeid, handle: name.handle)
            withExtendedLifetime(frontEnd) {}
        }
        try Self.waitFor(mountPoint + "/base")   // the host mount is up
        var changed = image
        changed.replaceSubrange((4196)..<(4196 + 5000), with: Array(repeating: 0xEE, count: 5000))
        #expect(try Data(contentsOf: URL(fileURLWithPath: mountPoint + "/vm1/disk")) == Data(changed))
        #expect(try Data(contentsOf: URL(fileURLWithPath: mountPoint + "/base/disk")) == Data(image))
        #expect(FileManager.default.fileExists(atPath: mountPoint + "/vm1/etc/hostname.new"))
        #expect(!FileManager.default.fileExists(atPath: mountPoint + "/base/etc/hostname.new"))
        let secondRun = second.stop()
        #expect(secondRun.status == 0, "\(secondRun.log)")
    }

    static func waitFor(_ path: String) throws {
        for _ in 0..<300 where !FileManager.default.fileExists(atPath: path) { usleep(20_000) }
        try #require(FileManager.default.fileExists(atPath: path), "no \(path)")
    }
}
