import CFUSE
import FUSETestSupport
import Testing
@testable import FUSEProtocol

/// Which requests a transport hands to a thread that may block.
@Suite struct BlockingRequestTests {
    func request(_ opcode: UInt32, size: UInt32? = nil) -> [UInt8] {
        var body: [UInt8] = []
        if let size {
            var r = fuse_read_in()
            r.size = size
            body = withUnsafeBytes(of: &r) { Array($0) }
        }
        return fuseMessage(opcode, unique: 1, body: body)
    }

    @Test func slowRequestsAreToldApartFromQuickOnes() {
        func blocks(_ m: [UInt8]) -> Bool { m.withUnsafeBytes { FUSEServer.mayBlock($0) } }
        for op in [FUSE_FSYNC, FUSE_FSYNCDIR, FUSE_SYNCFS, FUSE_FALLOCATE, FUSE_COPY_FILE_RANGE, FUSE_SETATTR, FUSE_OPEN] {
            #expect(blocks(request(op.rawValue)), "\(op)")
        }
        for op in [FUSE_LOOKUP, FUSE_GETATTR, FUSE_CREATE, FUSE_UNLINK, FUSE_RENAME, FUSE_READDIRPLUS, FUSE_FLUSH, FUSE_RELEASE] {
            #expect(!blocks(request(op.rawValue)), "\(op)")
        }
        #expect(!blocks(request(FUSE_READ.rawValue, size: 4096)))
        #expect(blocks(request(FUSE_READ.rawValue, size: 1 << 20)))
        #expect(!blocks(request(FUSE_WRITE.rawValue, size: 4096)))
        #expect(blocks(request(FUSE_WRITE.rawValue, size: 128 << 10)))
        // Cut short: a READ without its size counts as slow; a stub header as quick.
        #expect(blocks(Array(request(FUSE_READ.rawValue, size: 4096).prefix(44))))
        #expect(!blocks([1, 2, 3]))
    }
}
