import CFUSE
import FUSETestSupport
import Glibc
import Testing
@testable import FUSEProtocol

/// Malformed and unexpected FUSE messages: the engine answers each with an
/// error (or nothing), never crashes, and negotiates only what both sides offer.
@Suite struct HostileInputTests {
    @Test func initNegotiatesOnlyWhatBothOffer() throws {
        let server = FUSEServer(operations: StubOperations())
        let replies = Replies()
        let m = fuseMessage(FUSE_INIT, unique: 9, body: fuseInitArgument(flags: UInt32(FUSE_ASYNC_READ | FUSE_POSIX_LOCKS | FUSE_WRITEBACK_CACHE)))
        m.withUnsafeBytes { server.handle($0) { replies.all.append($0) } }
        #expect(server.initialized)
        #expect(server.negotiated == UInt64(FUSE_ASYNC_READ | FUSE_POSIX_LOCKS))   // no writeback cache: not offered
        let out = replies.all[0].withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: fuse_init_out.self) }
        #expect(out.major == 7 && out.max_write == 1 << 20)
    }

    @Test func requestsBeforeInitAreRefused() throws {
        let server = FUSEServer(operations: StubOperations())
        let replies = Replies()
        fuseMessage(FUSE_GETATTR.rawValue, unique: 5, body: [UInt8](repeating: 0, count: 16)).withUnsafeBytes {
            server.handle($0) { replies.all.append($0) }
        }
        let h = replies.all[0].withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }
        #expect(h.unique == 5 && h.error == -EIO)
    }

    /// Every opcode with its argument cut at every length: an error reply (or
    /// none for FORGET-like requests), the right unique, never a crash.
    @Test func truncatedArgumentsGetErrorReplies() throws {
        let server = initializedServer(StubOperations(), flags: 0xFFFF_FFFF, flags2: 0xFFFF_FFFF)
        for opcode in UInt32(1)...52 where opcode != FUSE_INIT.rawValue && opcode != FUSE_DESTROY.rawValue {
            for length in 0..<40 {
                let replies = Replies()
                let unique = UInt64(opcode) << 16 | UInt64(length)
                // Non-NUL bytes so names never terminate early.
                fuseMessage(opcode, unique: unique, body: [UInt8](repeating: 0x41, count: length)).withUnsafeBytes {
                    server.handle($0) { replies.all.append($0) }
                }
                for r in replies.all {
                    let h = r.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }
                    #expect(h.unique == unique)
                    #expect(Int(h.len) == r.count)
                }
            }
        }
    }

    @Test func headerLengthMustMatchTheMessage() throws {
        let server = initializedServer(StubOperations(), flags: 0xFFFF_FFFF, flags2: 0xFFFF_FFFF)
        var m = fuseMessage(FUSE_GETATTR.rawValue, unique: 77, body: [UInt8](repeating: 0, count: 16))
        m.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(4096), as: UInt32.self) }   // claims more than it has
        let replies = Replies()
        m.withUnsafeBytes { server.handle($0) { replies.all.append($0) } }
        #expect(replies.all.count == 1)
        #expect(replies.all[0].withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }.error == -EINVAL)
    }

    @Test func randomMessagesNeverCrash() throws {
        let server = initializedServer(StubOperations(), flags: 0xFFFF_FFFF, flags2: 0xFFFF_FFFF)
        var rng = SystemRandomNumberGenerator()
        for i in 0..<20_000 {
            let length = Int.random(in: 0..<300, using: &rng)
            var bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if length >= 40 && i % 2 == 0 {
                // Mostly well-formed headers, so dispatch is reached.
                bytes.withUnsafeMutableBytes {
                    $0.storeBytes(of: UInt32(length), as: UInt32.self)
                    $0.storeBytes(of: UInt32.random(in: 1...60, using: &rng), toByteOffset: 4, as: UInt32.self)
                    $0.storeBytes(of: UInt16(0), toByteOffset: 36, as: UInt16.self)
                }
            }
            bytes.withUnsafeBytes { server.handle($0) { _ in } }
        }
    }

    @Test func unknownOpcodesAreENOSYS() throws {
        let server = initializedServer(StubOperations(), flags: 0xFFFF_FFFF, flags2: 0xFFFF_FFFF)
        for opcode: UInt32 in [FUSE_IOCTL.rawValue, FUSE_POLL.rawValue, FUSE_BMAP.rawValue, 999, 4096] {
            let replies = Replies()
            fuseMessage(opcode, unique: 3, body: [UInt8](repeating: 0, count: 64)).withUnsafeBytes {
                server.handle($0) { replies.all.append($0) }
            }
            #expect(replies.all.first?.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }.error == -ENOSYS)
        }
    }
}
