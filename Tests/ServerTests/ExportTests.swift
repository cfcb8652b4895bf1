import CFUSE
@testable import FUSEProtocol
import Glibc
import PMFSMetadata
import Testing
@testable import PMFSServer

/// A file system with /vms/vm1/{file, sub/}, /vms/vm2/other and /secret,
/// made through a host session; guest sessions are confined to an export.
final class ExportFixture {
    let pool = try! PoolSessions()
    let host: PMFSOperations
    let root = FUSERequest(unique: 1, nodeid: 1, uid: 0, gid: 0, pid: 1, opcode: 0)
    var vms: UInt64 = 0, vm1: UInt64 = 0, vm2: UInt64 = 0, file: UInt64 = 0, sub: UInt64 = 0, secret: UInt64 = 0, other: UInt64 = 0

    init() throws {
        host = pool.session()
        vms = try mkdir(1, "vms")
        vm1 = try mkdir(vms, "vm1")
        vm2 = try mkdir(vms, "vm2")
        file = try create(vm1, "file")
        sub = try mkdir(vm1, "sub")
        other = try create(vm2, "other")
        secret = try create(1, "secret")
    }

    func mkdir(_ parent: UInt64, _ name: String) throws -> UInt64 {
        try host.mkdir(root, parent: parent, name: Array(name.utf8), mode: 0o755, umask: 0).nodeid
    }

    func create(_ parent: UInt64, _ name: String) throws -> UInt64 {
        let (e, o) = try host.create(root, parent: parent, name: Array(name.utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        try host.release(root, nodeid: e.nodeid, handle: o.handle, flags: 0, releaseFlags: 0, lockOwner: 0)
        return e.nodeid
    }

    /// A guest session on `options` (as after the socket path on the command line).
    func guest(_ options: String = "export=/vms/vm1") throws -> PMFSOperations {
        let policy = try ExportPolicy.parse(options: options.isEmpty ? [] : options.split(separator: ",", omittingEmptySubsequences: false))
        return PMFSOperations(metadata: pool.metadata, fs: pool.fs, group: pool.group, export: try Export.open(policy, in: pool.metadata))
    }
}

func request(uid: UInt32 = 0, gid: UInt32 = 0) -> FUSERequest {
    FUSERequest(unique: 7, nodeid: 1, uid: uid, gid: gid, pid: 1, opcode: 0)
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

func names(_ ops: PMFSOperations, _ dir: UInt64) throws -> [String: UInt64] {
    let h = try ops.opendir(request(), nodeid: dir, flags: 0).handle
    defer { try? ops.releasedir(request(), nodeid: dir, handle: h) }
    var all: [String: UInt64] = [:]
    for e in try ops.readdir(request(), nodeid: dir, handle: h, offset: 0, limit: 100) { all[String(decoding: e.name, as: UTF8.self)] = e.ino }
    return all
}

@Suite struct ExportConfinementTests {
    @Test func nodeidOneIsTheExportDirectory() throws {
        let f = try ExportFixture()
        let g = try f.guest()
        let (attributes, _) = try g.getattr(request(), nodeid: 1, handle: nil)
        #expect(attributes.ino == 1)
        #expect(try g.lookup(request(), parent: 1, name: bytes("file")).nodeid == f.file)
        #expect(throws: FUSEError(ENOENT)) { try g.lookup(request(), parent: 1, name: bytes("secret")) }
        #expect(throws: FUSEError(ENOENT)) { try g.lookup(request(), parent: 1, name: bytes("vm1")) }
        // Its listing: the export's entries; "." and ".." are the root itself.
        #expect(try names(g, 1) == [".": 1, "..": 1, "file": f.file, "sub": f.sub])
        // The host still sees the whole tree.
        #expect(try f.host.lookup(request(), parent: 1, name: bytes("secret")).nodeid == f.secret)
    }

    @Test func dotDotAtTheExportRootStaysThere() throws {
        let f = try ExportFixture()
        let g = try f.guest()
        #expect(try g.lookup(request(), parent: 1, name: bytes("..")).nodeid == 1)
        #expect(try g.lookup(request(), parent: 1, name: bytes(".")).nodeid == 1)
        #expect(try g.lookup(request(), parent: 1, name: bytes("..")).attributes.ino == 1)
    }

    @Test func dotDotOfASubdirectoryIsTheRootAndForgetBalances() throws {
        let f = try ExportFixture()
        let g = try f.guest()
        let sub = try g.lookup(request(), parent: 1, name: bytes("sub"))
        let up = try g.lookup(request(), parent: sub.nodeid, name: bytes(".."))
        #expect(up.nodeid == 1 && up.attributes.ino == 1)
        #expect(try names(g, sub.nodeid)[".."] == 1)
        // The export directory's own inode number is never a node ID of the guest's.
        #expect(throws: FUSEError(EBADF)) { try g.getattr(request(), nodeid: f.vm1, handle: nil) }
        let pinsBefore = f.pool.metadata.pinCount(f.vm1)
        g.forget(nodeid: 1, count: 1)   // the reference ".." gave
        #expect(f.pool.metadata.pinCount(f.vm1) == pinsBefore - 1)
    }

    @Test func nodeidsOutsideTheExportAreEBADF() throws {
        let f = try ExportFixture()
        let g = try f.guest()
        for outside in [f.secret, f.vms, f.vm2, f.other] {
            #expect(throws: FUSEError(EBADF)) { try g.getattr(request(), nodeid: outside, handle: nil) }
            #expect(throws: FUSEError(EBADF)) { try g.lookup(request(), parent: outside, name: bytes("other")) }
            #expect(throws: FUSEError(EBADF)) { try g.link(request(), nodeid: outside, newParent: 1, newName: bytes("stolen")) }
            #expect(throws: FUSEError(EBADF)) { try g.open(request(), nodeid: outside, flags: UInt32(O_RDONLY), killSuidGid: false) }
        }
        #expect(throws: FUSEError(EBADF)) {
            try g.rename(request(), parent: 1, name: bytes("file"), newParent: f.vm2, newName: bytes("file"), flags: 0)
        }
        #expect(throws: FUSEError(ENOENT)) { try f.host.lookup(request(), parent: f.vm1, name: bytes("stolen")) }
    }

    /// An orphan another session holds (unlinked while open), even one that
    /// was inside this export, is not reachable by its number.
    @Test func otherSessionsOrphansAreUnreachable() throws {
        let f = try ExportFixture()
        let (e, o) = try f.host.create(f.root, parent: f.vm1, name: bytes("doomed"), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        try f.host.unlink(f.root, parent: f.vm1, name: bytes("doomed"))
        let g = try f.guest()
        #expect(throws: FUSEError(EBADF)) { try g.getattr(request(), nodeid: e.nodeid, handle: nil) }
        #expect(throws: FUSEError(EBADF)) { try g.link(request(), nodeid: e.nodeid, newParent: 1, newName: bytes("back")) }
        #expect(throws: FUSEError(EBADF)) { try g.open(request(), nodeid: e.nodeid, flags: UInt32(O_RDWR), killSuidGid: false) }
        try f.host.release(f.root, nodeid: e.nodeid, handle: o.handle, flags: 0, releaseFlags: 0, lockOwner: 0)
    }

    /// A directory the host moved out of the export while the guest held it:
    /// renames and links across the boundary are EXDEV, its ".." unanswered.
    @Test func renameAndLinkAcrossTheBoundaryAreEXDEV() throws {
        let f = try ExportFixture()
        let g = try f.guest()
        let sub = try g.lookup(request(), parent: 1, name: bytes("sub")).nodeid
        let (inSub, h) = try g.create(request(), parent: sub, name: bytes("x"), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        try g.release(request(), nodeid: inSub.nodeid, handle: h.handle, flags: 0, releaseFlags: 0, lockOwner: 0)
        let file = try g.lookup(request(), parent: 1, name: bytes("file")).nodeid
        try f.host.rename(f.root, parent: f.vm1, name: bytes("sub"), newParent: 1, newName: bytes("moved"), flags: 0)

        #expect(throws: FUSEError(EXDEV)) {
            try g.rename(request(), parent: sub, name: bytes("x"), newParent: 1, newName: bytes("x"), flags: 0)
        }
        #expect(throws: FUSEError(EXDEV)) {
            try g.rename(request(), parent: 1, name: bytes("file"), newParent: sub, newName: bytes("file"), flags: 0)
        }
        #expect(throws: FUSEError(EXDEV)) { try g.link(request(), nodeid: file, newParent: sub, newName: bytes("l")) }
        #expect(throws: FUSEError(ENOENT)) { try g.lookup(request(), parent: sub, name: bytes("..")) }
        // Inside the export both still work.
        try g.rename(request(), parent: 1, name: bytes("file"), newParent: 1, newName: bytes("renamed"), flags: 0)
        #expect(try g.link(request(), nodeid: file, newParent: 1, newName: bytes("linked")).nodeid == file)
    }

    @Test func twoSessionsOnTwoExportsSeeOnlyTheirOwn() throws {
        let f = try ExportFixture()
        let one = try f.guest("export=/vms/vm1"), two = try f.guest("export=/vms/vm2")
        #expect(try names(one, 1).keys.sorted() == [".", "..", "file", "sub"])
        #expect(try names(two, 1).keys.sorted() == [".", "..", "other"])
        let mine = try two.lookup(request(), parent: 1, name: bytes("other")).nodeid
        #expect(throws: FUSEError(ENOENT)) { try one.lookup(request(), parent: 1, name: bytes("other")) }
        #expect(throws: FUSEError(EBADF)) { try one.getattr(request(), nodeid: mine, handle: nil) }
        let made = try one.mkdir(request(), parent: 1, name: bytes("new"), mode: 0o755, umask: 0)
        #expect(throws: FUSEError(EBADF)) { try two.getattr(request(), nodeid: made.nodeid, handle: nil) }
        #expect(try f.host.lookup(f.root, parent: f.vm1, name: bytes("new")).nodeid == made.nodeid)
    }

    /// Through the FUSE engine's wire format, as a guest kernel speaks.
    @Test func wireRequestsAreConfined() throws {
        let f = try ExportFixture()
        var wire = Wire(try f.guest())
        #expect(wire.getattr(1) == 0)
        #expect(wire.getattr(f.secret) == EBADF)
        #expect(wire.getattr(f.vm1) == EBADF)
        let up = wire.send(FUSE_LOOKUP, nodeid: 1, UInt8(0x2E), extra: [0x2E, 0])
        #expect(up.error == 0)
        #expect(up.body.withUnsafeBytes { $0.loadUnaligned(as: fuse_entry_out.self).nodeid } == 1)
    }
}

@Suite struct ExportReadOnlyTests {
    @Test func everyChangeIsEROFS() throws {
        let f = try ExportFixture()
        let g = try f.guest("export=/vms/vm1,read-only")
        let r = request()
        let file = try g.lookup(r, parent: 1, name: bytes("file")).nodeid
        _ = try g.lookup(r, parent: 1, name: bytes("sub"))
        let readHandle = try g.open(r, nodeid: file, flags: UInt32(O_RDONLY), killSuidGid: false).handle
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(try buffer.withUnsafeMutableBytes { try g.read(r, nodeid: file, handle: readHandle, offset: 0, into: $0) } == 0)

        var setattr = FUSESetattr(killSuidGid: false)
        setattr.mode = 0o600
        let changes: [(String, () throws -> Void)] = [
            ("write", { _ = try [1, 2].withUnsafeBytes { try g.write(r, nodeid: file, handle: readHandle, offset: 0, data: $0, flags: 0) } }),
            ("create", { _ = try g.create(r, parent: 1, name: bytes("n"), mode: 0o644, flags: UInt32(O_RDWR), umask: 0) }),
            ("mknod", { _ = try g.mknod(r, parent: 1, name: bytes("p"), mode: 0o010644, rdev: 0, umask: 0) }),
            ("mkdir", { _ = try g.mkdir(r, parent: 1, name: bytes("d"), mode: 0o755, umask: 0) }),
            ("unlink", { try g.unlink(r, parent: 1, name: bytes("file")) }),
            ("rmdir", { try g.rmdir(r, parent: 1, name: bytes("sub")) }),
            ("rename", { try g.rename(r, parent: 1, name: bytes("file"), newParent: 1, newName: bytes("f2"), flags: 0) }),
            ("link", { _ = try g.link(r, nodeid: file, newParent: 1, newName: bytes("l")) }),
            ("symlink", { _ = try g.symlink(r, parent: 1, name: bytes("s"), target: bytes("file")) }),
            ("setattr", { _ = try g.setattr(r, nodeid: file, setattr) }),
            ("setxattr", { try [1].withUnsafeBytes { try g.setxattr(r, nodeid: file, name: bytes("user.a"), value: $0, flags: 0) } }),
            ("removexattr", { try g.removexattr(r, nodeid: file, name: bytes("user.a")) }),
            ("fallocate", { try g.fallocate(r, nodeid: file, handle: readHandle, offset: 0, length: 4096, mode: 0) }),
            ("copy_file_range", { _ = try g.copyFileRange(r, nodeid: file, handle: readHandle, offset: 0, toNode: file, toHandle: readHandle,
                                                         toOffset: 8, length: 1, flags: 0) }),
            ("open O_WRONLY", { _ = try g.open(r, nodeid: file, flags: UInt32(O_WRONLY), killSuidGid: false) }),
            ("open O_RDWR", { _ = try g.open(r, nodeid: file, flags: UInt32(O_RDWR), killSuidGid: false) }),
            ("open O_TRUNC", { _ = try g.open(r, nodeid: file, flags: UInt32(O_RDONLY | O_TRUNC), killSuidGid: false) }),
            ("tmpfile", { _ = try g.tmpfile(r, parent: 1, mode: 0o644, flags: UInt32(O_RDWR), umask: 0) }),
            ("access W_OK", { try g.access(r, nodeid: file, mask: 2) }),
        ]
        for (name, change) in changes {
            #expect(throws: FUSEError(EROFS), "\(name)") { try change() }
        }
        // Nothing changed, and reading still works.
        #expect(try names(g, 1).keys.sorted() == [".", "..", "file", "sub"])
        #expect(try g.getattr(r, nodeid: file, handle: nil).0.mode == 0o100644)
        try g.access(r, nodeid: file, mask: 4)
        // The host may still change it.
        _ = try f.host.mkdir(f.root, parent: f.vm1, name: bytes("hosts"), mode: 0o755, umask: 0)
    }
}

@Suite struct ExportIDMapTests {
    let options = "export=/vms/vm1,uid-map=0:100000:65536,gid-map=0:200000:65536"

    @Test func createdFilesAreOwnedByTheMappedHostIds() throws {
        let f = try ExportFixture()
        let g = try f.guest(options)
        let (e, _) = try g.create(request(uid: 1000, gid: 1000), parent: 1, name: bytes("mine"), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        #expect(e.attributes.uid == 1000 && e.attributes.gid == 1000)
        let onHost = try f.pool.metadata.getattr(e.nodeid)
        #expect(onHost.uid == 101_000 && onHost.gid == 201_000)
        let d = try g.mkdir(request(uid: 0, gid: 0), parent: 1, name: bytes("rootdir"), mode: 0o755, umask: 0)
        #expect(try f.pool.metadata.getattr(d.nodeid).uid == 100_000)
        #expect(try g.getattr(request(), nodeid: d.nodeid, handle: nil).0.uid == 0)
    }

    @Test func unmappedHostIdsShowAsTheOverflowId() throws {
        let f = try ExportFixture()
        let g = try f.guest(options)
        // The fixture's files belong to host root (0), which this map does not cover.
        let e = try g.lookup(request(), parent: 1, name: bytes("file"))
        #expect(e.attributes.uid == 65534 && e.attributes.gid == 65534)
        #expect(try g.getattr(request(), nodeid: 1, handle: nil).0.uid == 65534)
        // The host sees its own ids.
        #expect(try f.host.getattr(f.root, nodeid: f.file, handle: nil).0.uid == 0)
    }

    @Test func setattrOwnersAreMappedAndUnmappedOnesRefused() throws {
        let f = try ExportFixture()
        let g = try f.guest(options)
        let file = try g.lookup(request(), parent: 1, name: bytes("file")).nodeid
        var chown = FUSESetattr(killSuidGid: false)
        chown.uid = 2000; chown.gid = 3000
        let (a, _) = try g.setattr(request(), nodeid: file, chown)
        #expect(a.uid == 2000 && a.gid == 3000)
        let onHost = try f.pool.metadata.getattr(file)
        #expect(onHost.uid == 102_000 && onHost.gid == 203_000)
        var outside = FUSESetattr(killSuidGid: false)
        outside.uid = 70_000
        #expect(throws: FUSEError(EINVAL)) { try g.setattr(request(), nodeid: file, outside) }
        outside = FUSESetattr(killSuidGid: false)
        outside.gid = 65_536
        #expect(throws: FUSEError(EINVAL)) { try g.setattr(request(), nodeid: file, outside) }
        #expect(try f.pool.metadata.getattr(file).uid == 102_000)
    }

    @Test func callersWithoutAMappingCannotCreate() throws {
        let f = try ExportFixture()
        let g = try f.guest(options)
        #expect(throws: FUSEError(EOVERFLOW)) {
            try g.create(request(uid: 70_000, gid: 0), parent: 1, name: bytes("x"), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        }
        #expect(throws: FUSEError(EOVERFLOW)) { try g.mkdir(request(uid: 0, gid: 70_000), parent: 1, name: bytes("d"), mode: 0o755, umask: 0) }
        #expect(throws: FUSEError(EOVERFLOW)) { try g.symlink(request(uid: 99_999), parent: 1, name: bytes("s"), target: bytes("t")) }
        #expect(throws: FUSEError(ENOENT)) { try f.host.lookup(f.root, parent: f.vm1, name: bytes("x")) }
    }

    @Test func accessComparesMappedIds() throws {
        let f = try ExportFixture()
        let g = try f.guest(options)
        let (e, _) = try g.create(request(uid: 1000, gid: 1000), parent: 1, name: bytes("private"), mode: 0o600, flags: UInt32(O_RDWR), umask: 0)
        try g.access(request(uid: 1000, gid: 1000), nodeid: e.nodeid, mask: 6)
        #expect(throws: FUSEError(EACCES)) { try g.access(request(uid: 1001, gid: 1000), nodeid: e.nodeid, mask: 4) }
        // Host uid 1000 is not guest uid 1000: unmapped callers are nobody.
        #expect(throws: FUSEError(EACCES)) { try g.access(request(uid: 70_000, gid: 70_000), nodeid: e.nodeid, mask: 4) }
    }

    @Test func withoutAMapIdsPassUnchanged() throws {
        let f = try ExportFixture()
        let g = try f.guest()
        let (e, _) = try g.create(request(uid: 1000, gid: 50), parent: 1, name: bytes("plain"), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        #expect(e.attributes.uid == 1000 && e.attributes.gid == 50)
        #expect(try f.pool.metadata.getattr(e.nodeid).uid == 1000)
    }
}

@Suite struct ExportNodePolicyTests {
    @Test func guestExportsRefuseDevicesAndStripSetIDBits() throws {
        let f = try ExportFixture()
        let g = try f.guest()
        let r = request()
        #expect(throws: FUSEError(EPERM)) { try g.mknod(r, parent: 1, name: bytes("null"), mode: 0o020666, rdev: 0x103, umask: 0) }
        #expect(throws: FUSEError(EPERM)) { try g.mknod(r, parent: 1, name: bytes("disk"), mode: 0o060600, rdev: 0x800, umask: 0) }
        let fifo = try g.mknod(r, parent: 1, name: bytes("fifo"), mode: 0o010644, rdev: 0, umask: 0)
        #expect(fifo.attributes.mode == 0o010644)
        let (file, _) = try g.create(r, parent: 1, name: bytes("suid"), mode: 0o4755, flags: UInt32(O_RDWR), umask: 0)
        #expect(file.attributes.mode == 0o100755)
        let dir = try g.mkdir(r, parent: 1, name: bytes("sgid"), mode: 0o2775, umask: 0)
        #expect(dir.attributes.mode == 0o040775)
        let node = try g.mknod(r, parent: 1, name: bytes("regular"), mode: 0o106755, rdev: 0, umask: 0)
        #expect(node.attributes.mode == 0o100755)
        var chmod = FUSESetattr(killSuidGid: false)
        chmod.mode = 0o6755
        #expect(try g.setattr(r, nodeid: file.nodeid, chmod).0.mode == 0o100755)
        #expect(try f.pool.metadata.getattr(file.nodeid).mode == 0o100755)
        // File capabilities are set-id bits by another name.
        #expect(throws: FUSEError(EPERM)) {
            try [1, 0, 0, 2].withUnsafeBytes { try g.setxattr(r, nodeid: file.nodeid, name: bytes("security.capability"), value: $0, flags: 0) }
        }
        try [1].withUnsafeBytes { try g.setxattr(r, nodeid: file.nodeid, name: bytes("user.note"), value: $0, flags: 0) }
    }

    @Test func allowedWhenTheExportSaysSo() throws {
        let f = try ExportFixture()
        let g = try f.guest("export=/vms/vm1,devices=allow,setid=allow")
        let r = request()
        #expect(try g.mknod(r, parent: 1, name: bytes("null"), mode: 0o020666, rdev: 0x103, umask: 0).attributes.mode == 0o020666)
        let (file, _) = try g.create(r, parent: 1, name: bytes("suid"), mode: 0o4755, flags: UInt32(O_RDWR), umask: 0)
        #expect(file.attributes.mode == 0o104755)
        var chmod = FUSESetattr(killSuidGid: false)
        chmod.mode = 0o6755
        #expect(try g.setattr(r, nodeid: file.nodeid, chmod).0.mode == 0o106755)
        try [1, 0, 0, 2].withUnsafeBytes { try g.setxattr(r, nodeid: file.nodeid, name: bytes("security.capability"), value: $0, flags: 0) }
    }

    /// Inheriting a setgid directory's bit is the file system's rule, not the guest's request.
    @Test func setgidDirectoriesStillPassTheirBitOn() throws {
        let f = try ExportFixture()
        var chmod = FUSESetattr(killSuidGid: false)
        chmod.mode = 0o2775
        _ = try f.host.setattr(f.root, nodeid: f.sub, chmod)
        let g = try f.guest()
        let sub = try g.lookup(request(), parent: 1, name: bytes("sub")).nodeid
        #expect(try g.mkdir(request(), parent: sub, name: bytes("child"), mode: 0o755, umask: 0).attributes.mode == 0o042755)
    }

    @Test func theHostMountIsUnaffected() throws {
        let f = try ExportFixture()
        #expect(try f.host.mknod(f.root, parent: 1, name: bytes("null"), mode: 0o020666, rdev: 0x103, umask: 0).attributes.mode == 0o020666)
        let (file, _) = try f.host.create(f.root, parent: 1, name: bytes("suid"), mode: 0o4755, flags: UInt32(O_RDWR), umask: 0)
        #expect(file.attributes.mode == 0o104755)
    }

    /// A guest socket without export options serves the whole tree, with the guest defaults.
    @Test func aPlainGuestSocketKeepsTheWholeTree() throws {
        let f = try ExportFixture()
        let g = try f.guest("")   // no options
        #expect(try g.lookup(request(), parent: 1, name: bytes("secret")).nodeid == f.secret)
        #expect(throws: FUSEError(EPERM)) { try g.mknod(request(), parent: 1, name: bytes("null"), mode: 0o020666, rdev: 0x103, umask: 0) }
    }
}

@Suite struct ExportOptionTests {
    @Test func parsesSocketAndOptions() throws {
        let spec = try GuestListenerSpec.parse("/run/vm1.sock,export=/vms/vm1,read-only,uid-map=0:100000:65536,uid-map=70000:70000:1,gid-map=0:100000:65536,devices=allow,setid=allow")
        #expect(spec.target == "/run/vm1.sock")
        #expect(spec.policy.path == "/vms/vm1")
        #expect(spec.policy.readOnly && spec.policy.devices && spec.policy.setID)
        #expect(spec.policy.uids.ranges.count == 2)
        #expect(spec.policy.uids.host(0) == 100_000 && spec.policy.uids.host(65_535) == 165_535 && spec.policy.uids.host(65_536) == nil)
        #expect(spec.policy.uids.host(70_000) == 70_000)
        #expect(spec.policy.uids.guest(165_535) == 65_535 && spec.policy.uids.guest(99_999) == 65534)
        let plain = try GuestListenerSpec.parse("/run/vm2.sock")
        #expect(plain.target == "/run/vm2.sock" && plain.policy == .guest)
        #expect(try GuestListenerSpec.parse("3,export=/a,devices=deny,setid=strip").policy == ExportPolicy(path: "/a", devices: false, setID: false))
    }

    /// Unnamed device and set-id policy: allowed where one guest alone serves
    /// the export, denied where guests' exports overlap; named ones stay.
    @Test func sharedExportsDenyDevicesAndSetIDUnlessTold() throws {
        var specs = try ["/a.sock", "/b.sock,export=/vms/b", "/c.sock,export=/vms/b/inner", "/d.sock,export=/vms/d,devices=deny",
                         "/e.sock,export=/vms/e", "/f.sock,export=/vms/e,setid=allow", "/g.sock,export=/vms/bb"].map(GuestListenerSpec.parse)
        specs.removeFirst()   // the whole tree would overlap every other export
        GuestListenerSpec.settleSharing(&specs)
        let policies = specs.map { ($0.policy.devices, $0.policy.setID) }
        #expect(policies.map(\.0) == [false, false, false, false, false, true])
        #expect(policies.map(\.1) == [false, false, true, false, true, true])
        var alone = [try GuestListenerSpec.parse("/a.sock")]
        GuestListenerSpec.settleSharing(&alone)
        #expect(alone[0].policy.devices && alone[0].policy.setID)
        var whole = try ["/a.sock", "/b.sock,export=/vms/b"].map(GuestListenerSpec.parse)
        GuestListenerSpec.settleSharing(&whole)
        #expect(whole.allSatisfy { !$0.policy.devices && !$0.policy.setID })
    }

    @Test func cacheAndLocksAreTheListenersNotThePolicys() throws {
        let spec = try GuestListenerSpec.parse("7,export=/vm1,cache=none,read-only,locks=local")
        #expect(spec.cache == PMFSOperations.CachePolicy.none && spec.locks == "local")
        #expect(spec.policy.path == "/vm1" && spec.policy.readOnly)
        let plain = try GuestListenerSpec.parse("7,export=/vm1")
        #expect(plain.cache == nil && plain.locks == nil)
    }

    @Test(arguments: [
        ("/s,bogus", "unknown option 'bogus'"),
        ("/s,export=relative", "absolute path"),
        ("/s,export=", "absolute path"),
        ("/s,export=/a,export=/b", "given twice"),
        ("/s,read-only=yes", "takes no value"),
        ("/s,uid-map=1:2", "GUEST:HOST:COUNT"),
        ("/s,uid-map=a:b:c", "GUEST:HOST:COUNT"),
        ("/s,uid-map=0:0:0", "count of at least 1"),
        ("/s,gid-map=4294967295:0:2", "past 4294967295"),
        ("/s,uid-map=0:4294967295:2", "past 4294967295"),
        ("/s,uid-map=0:1000:10,uid-map=5:5000:10", "overlap"),
        ("/s,uid-map=0:1000:10,uid-map=100:1005:10", "overlap"),
        ("/s,devices=maybe", "allow or deny"),
        ("/s,setid=", "allow or strip"),
        ("/s,,read-only", "empty option"),
        ("/s,", "empty option"),
        (",export=/a", "comes first"),
        ("/s,cache=sometimes", "none, auto or always"),
        ("/s,cache=none,cache=auto", "given twice"),
        ("/s,locks=mine", "shared or local"),
    ])
    func badOptionsSayWhatIsWrong(text: String, message: String) {
        #expect {
            _ = try GuestListenerSpec.parse(text)
        } throws: { error in
            "\(error)".contains(message)
        }
    }

    @Test func exportDirectoryMustExistAndBeADirectory() throws {
        let f = try ExportFixture()
        func open(_ path: String) throws -> Export {
            try Export.open(ExportPolicy.parse(options: ["export=\(path)"]), in: f.pool.metadata)
        }
        #expect(try open("/vms/vm1").root == f.vm1)
        #expect(try open("/vms//vm1/").root == f.vm1)
        #expect(try open("/").root == 1 && !(try open("/")).confined)
        for (path, message) in [("/vms/none", "no such directory"), ("/secret", "not a directory"), ("/vms/vm1/file/x", "not a directory"),
                                ("/vms/../secret", "'..'"), ("/./vms", "'.'")] {
            #expect { _ = try open(path) } throws: { "\($0)".contains(message) }
        }
        // The export directory is pinned: removed while served, its number is not reused.
        let before = f.pool.metadata.pinCount(f.vm2)
        _ = try open("/vms/vm2")
        #expect(f.pool.metadata.pinCount(f.vm2) == before + 1)
    }
}
