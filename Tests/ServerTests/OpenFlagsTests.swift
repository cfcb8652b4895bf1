import CFUSE
@testable import FUSEProtocol
import Glibc
import Testing
@testable import PMFSServer

/// FLUSH only drops POSIX locks held in pmfsd's table. A session whose kernel
/// keeps POSIX locks itself (INIT without FUSE_POSIX_LOCKS: `locks=local`)
/// gets every file opened FOPEN_NOFLUSH, so close(2) costs it no request; a
/// session with shared locks keeps its FLUSH.
@Suite struct OpenFlagsTests {
    let root = FUSERequest(unique: 1, nodeid: 1, uid: 0, gid: 0, pid: 1, opcode: 0)
    let noFlush = UInt32(FOPEN_NOFLUSH)

    @Test func filesAreNoFlushOnlyWhereTheKernelKeepsPosixLocks() throws {
        let s = try PoolSessions()
        let local = s.session()
        _ = local.initialize(capabilities: UInt64(FUSE_FLOCK_LOCKS))
        let (f, created) = try local.create(root, parent: 1, name: Array("f".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        #expect(created.flags & noFlush != 0)
        let opened = try local.open(root, nodeid: f.nodeid, flags: UInt32(O_RDONLY), killSuidGid: false)
        #expect(opened.flags & noFlush != 0)

        let shared = s.session()
        _ = shared.initialize(capabilities: UInt64(FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS))
        let (g, createdShared) = try shared.create(root, parent: 1, name: Array("g".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        #expect(createdShared.flags & noFlush == 0)
        #expect(try shared.open(root, nodeid: g.nodeid, flags: UInt32(O_RDONLY), killSuidGid: false).flags & noFlush == 0)
    }
}
