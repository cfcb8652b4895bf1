import CFUSE
import FUSETestSupport
import Glibc
import Testing
@testable import FUSEProtocol

/// A file system that implements only GETATTR: the protocol's defaults answer
/// everything else with ENOSYS, so a new back end starts from a working one.
final class GetattrOnly: FUSEOperations, @unchecked Sendable {
    func getattr(_ r: FUSERequest, nodeid: UInt64, handle: UInt64?) throws -> (FUSEAttributes, Double) {
        (FUSEAttributes(ino: nodeid, size: 0, blocks: 0, atime: (0, 0), mtime: (0, 0), ctime: (0, 0), mode: 0o040755,
                        nlink: 2, uid: 0, gid: 0, rdev: 0, blockSize: 4096), 1)
    }
}

@Suite struct OperationDefaultsTests {
    func errorOf(_ server: FUSEServer, opcode: fuse_opcode, unique: UInt64, body: [UInt8]) -> Int32? {
        let replies = Replies()
        fuseMessage(opcode, unique: unique, body: body).withUnsafeBytes { server.handle($0) { replies.all.append($0) } }
        return replies.all.first.map { $0.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self).error } }
    }

    @Test func whatIsNotImplementedAnswersENOSYS() {
        let server = FUSEServer(operations: GetattrOnly())
        #expect(errorOf(server, opcode: FUSE_INIT, unique: 1, body: fuseInitArgument()) == 0)
        #expect(errorOf(server, opcode: FUSE_GETATTR, unique: 2, body: [UInt8](repeating: 0, count: 16)) == 0)
        #expect(errorOf(server, opcode: FUSE_LOOKUP, unique: 3, body: Array("name".utf8) + [0]) == -ENOSYS)
        #expect(errorOf(server, opcode: FUSE_UNLINK, unique: 4, body: Array("name".utf8) + [0]) == -ENOSYS)
        #expect(errorOf(server, opcode: FUSE_STATFS, unique: 5, body: []) == -ENOSYS)
        // SETLK answers through its reply sink.
        var lk = fuse_lk_in()
        lk.lk.type = UInt32(F_WRLCK)
        #expect(errorOf(server, opcode: FUSE_SETLK, unique: 6, body: withUnsafeBytes(of: &lk) { Array($0) }) == -ENOSYS)
    }
}
