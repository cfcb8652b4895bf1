@testable import FUSEProtocol
import CFUSE
import FUSETestSupport
import FileSystemTestSupport
import Glibc
import PMFSCore
import PMFSData
import PMFSMetadata
import Testing
@testable import PMFSServer

/// A file system on a real pool with any number of sessions and no mount:
/// each session is driven through a FUSE engine, as a guest's requests arrive.
final class PoolSessions {
    let files: ShmFileSystem
    var metadata: MetadataStore { files.metadata }
    var fs: FileDataTier { files.fs }
    let group = SessionGroup()

    init() throws { files = try ShmFileSystem(name: "hostile", dataBlocks: 4096, poolSize: 32 << 20) }

    func session() -> PMFSOperations { PMFSOperations(metadata: metadata, fs: fs, group: group) }
}

/// Sends one request and returns its replies' errors (0: success) and bodies.
struct Wire {
    let server: FUSEServer
    var unique: UInt64 = 100

    init(_ operations: FUSEOperations) { server = initializedServer(operations) }

    @discardableResult
    mutating func send<Body>(_ opcode: fuse_opcode, nodeid: UInt64, _ body: Body, extra: [UInt8] = []) -> (error: Int32, body: [UInt8]) {
        unique += 1
        var b = body
        let bytes = withUnsafeBytes(of: &b) { Array($0) } + extra
        let replies = Replies()
        fuseMessage(opcode, unique: unique, nodeid: nodeid, body: bytes).withUnsafeBytes { server.handle($0) { replies.all.append($0) } }
        guard let r = replies.all.first else { return (0, []) }   // no reply (yet)
        let h = r.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }
        return (-h.error, Array(r.dropFirst(16)))
    }

    /// CREATE of `name` in the root: the node ID and handle.
    mutating func create(_ name: String, flags: Int32 = O_RDWR) -> (nodeid: UInt64, handle: UInt64)? {
        var c = fuse_create_in()
        c.flags = UInt32(flags); c.mode = 0o100644
        let r = send(FUSE_CREATE, nodeid: 1, c, extra: Array(name.utf8) + [0])
        guard r.error == 0 else { return nil }
        return r.body.withUnsafeBytes {
            ($0.loadUnaligned(as: fuse_entry_out.self).nodeid,
             $0.loadUnaligned(fromByteOffset: MemoryLayout<fuse_entry_out>.size, as: fuse_open_out.self).fh)
        }
    }

    mutating func read(_ nodeid: UInt64, handle: UInt64, offset: UInt64, size: UInt32) -> (error: Int32, body: [UInt8]) {
        var rd = fuse_read_in()
        rd.fh = handle; rd.offset = offset; rd.size = size
        return send(FUSE_READ, nodeid: nodeid, rd)
    }

    mutating func getattr(_ nodeid: UInt64) -> Int32 { send(FUSE_GETATTR, nodeid: nodeid, fuse_getattr_in()).error }
}

@Suite struct HostileRequestTests {
    /// Times at Int64.min seconds are stored (utimensat can set any time); the
    /// relatime check of the next READ and READDIR must not overflow on them,
    /// also after a restart (the times are persistent).
    @Test(arguments: [FATTR_ATIME, FATTR_MTIME, FATTR_CTIME, FATTR_ATIME | FATTR_MTIME | FATTR_CTIME])
    func extremeTimesDoNotTrapTheRelatimeCheck(fields: Int32) throws {
        let s = try PoolSessions()
        var wire = Wire(s.session())
        let created = wire.create("t")
        let f = try #require(created)
        for seconds in [Int64.min, Int64.max, Int64.min + 1, -1] {
            var sa = fuse_setattr_in()
            sa.valid = UInt32(fields)
            sa.atime = UInt64(bitPattern: seconds); sa.mtime = UInt64(bitPattern: seconds); sa.ctime = UInt64(bitPattern: seconds)
            #expect(wire.send(FUSE_SETATTR, nodeid: f.nodeid, sa).error == 0)
            #expect(wire.read(f.nodeid, handle: f.handle, offset: 0, size: 4096).error == 0)
            var sb = fuse_setattr_in()
            sb.valid = UInt32(fields); sb.fh = 0
            sb.atime = UInt64(bitPattern: seconds); sb.mtime = UInt64(bitPattern: seconds); sb.ctime = UInt64(bitPattern: seconds)
            #expect(wire.send(FUSE_SETATTR, nodeid: 1, sb).error == 0)
            let opened = wire.send(FUSE_OPENDIR, nodeid: 1, fuse_open_in())
            #expect(opened.error == 0)
            var rd = fuse_read_in()
            rd.fh = opened.body.withUnsafeBytes { $0.loadUnaligned(as: fuse_open_out.self).fh }; rd.size = 4096
            #expect(wire.send(FUSE_READDIR, nodeid: 1, rd).error == 0)
        }
        #expect(wire.getattr(f.nodeid) == 0)
    }

    /// Nanoseconds past a second are EINVAL, as utimensat(2) answers.
    @Test(arguments: [FATTR_ATIME, FATTR_MTIME, FATTR_CTIME])
    func nanosecondsPastASecondAreInvalid(field: Int32) throws {
        let s = try PoolSessions()
        var wire = Wire(s.session())
        let created = wire.create("n")
        let f = try #require(created)
        var sa = fuse_setattr_in()
        sa.valid = UInt32(field)
        sa.atimensec = .max; sa.mtimensec = .max; sa.ctimensec = 1_000_000_000
        #expect(wire.send(FUSE_SETATTR, nodeid: f.nodeid, sa).error == EINVAL)
        sa.atimensec = 999_999_999; sa.mtimensec = 999_999_999; sa.ctimensec = 999_999_999
        #expect(wire.send(FUSE_SETATTR, nodeid: f.nodeid, sa).error == 0)
    }

    @Test func relatimeRuleOnExtremeTimes() {
        let now = Timestamp.now()
        let t = { (s: Int64) in Timestamp(seconds: s, nanoseconds: 0) }
        #expect(Timestamp.relatimeUpdateDue(atime: t(.min), mtime: t(.min), ctime: t(.min), now: now))
        #expect(!Timestamp.relatimeUpdateDue(atime: t(.max), mtime: t(.min), ctime: t(.min), now: now))
        #expect(!Timestamp.relatimeUpdateDue(atime: now, mtime: now, ctime: now, now: now))
        #expect(Timestamp.relatimeUpdateDue(atime: t(now.seconds - 86_400), mtime: t(0), ctime: t(0), now: now))
        #expect(!Timestamp.relatimeUpdateDue(atime: t(.min + 5), mtime: t(.min), ctime: t(.min), now: t(.min + 10)))
    }

    /// The engine's own relatime check on a stored Int64.min atime (what a
    /// restarted daemon reads back from the pool).
    @Test func noteAccessOnStoredExtremeAtime() throws {
        let s = try PoolSessions()
        let ops = s.session()
        let r = FUSERequest(unique: 1, nodeid: 1, uid: 0, gid: 0, pid: 1, opcode: 0)
        let (e, _) = try ops.create(r, parent: 1, name: Array("a".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        _ = try s.metadata.setattr(e.nodeid, AttributeChanges(atime: Timestamp(seconds: .min, nanoseconds: 0)))
        #expect(try s.metadata.noteAccess(e.nodeid))
        #expect(try s.metadata.getattr(e.nodeid).atime.seconds > 0)
    }
}
