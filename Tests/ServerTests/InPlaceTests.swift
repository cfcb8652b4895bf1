import CFUSE
@testable import FUSEProtocol
import FUSETestSupport
import FileSystemTestSupport
import Glibc
import PMFSCore
import PMFSServer
import Testing

/// The FUSE engine over a real pool and data tier, with no kernel: requests
/// are handed to the engine as a transport would, in scattered pieces.
final class EngineSession {
    let files: ShmFileSystem
    var fs: FileDataTier { files.fs }
    let guest: PMFSOperations
    let request = FUSERequest(unique: 1, nodeid: 1, uid: 0, gid: 0, pid: 1, opcode: 0)

    init() throws {
        files = try ShmFileSystem(name: "in-place", dataBlocks: 8192)
        guest = PMFSOperations(metadata: files.metadata, fs: files.fs, group: SessionGroup())
    }
}

/// READ through the FUSE engine straight into a transport's scattered memory.
@Suite struct ReadInPlaceTests {
    @Test func readDataLandsInTheReplyMemoryAfterTheHeader() throws {
        let s = try EngineSession()
        let content = (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let (e, o) = try s.guest.create(s.request, parent: 1, name: Array("r".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        _ = try content.withUnsafeBytes { try s.guest.write(s.request, nodeid: e.nodeid, handle: o.handle, offset: 0, data: $0, flags: 0) }
        let server = initializedServer(s.guest)
        // Guest-like buffers: the header's 16 bytes split oddly, then page-sized pieces.
        let sizes = [10, 6 + 100, 4096, 4096, 8192, 5000]
        let memory = sizes.map { UnsafeMutableRawBufferPointer.allocate(byteCount: $0, alignment: 8) }
        defer { memory.forEach { $0.deallocate() } }
        memory.forEach { $0.initializeMemory(as: UInt8.self, repeating: 0xEE) }
        var rd = fuse_read_in()
        rd.fh = o.handle; rd.offset = 333; rd.size = 20_000
        var writer = ReplyWriter(memory)
        let outcome = fuseMessage(FUSE_READ, unique: 9, nodeid: e.nodeid, body: bytes(of: rd)).withUnsafeBytes {
            var request = RequestCursor($0)
            return server.handle(&request, &writer) { _ in Issue.record("a READ is never deferred") }
        }
        #expect(outcome == .replied(16 + content.count - 333))
        let header = Array(writer.bytes.prefix(16))
        let out = header.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }
        #expect(out.error == 0 && out.unique == 9)
        #expect(Int(out.len) == 16 + content.count - 333)   // to the end of the file
        let flat = Array(memory.map { Array($0) }.joined())
        #expect(Array(flat[16..<Int(out.len)]) == Array(content[333...]))
        #expect(flat[Int(out.len)...].allSatisfy { $0 == 0xEE })
    }
}

/// A request in pieces (a descriptor chain) through the engine: its reply, if
/// one was written in place.
func served(_ server: FUSEServer, _ segments: [UnsafeRawBufferPointer]) -> [UInt8]? {
    let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: server.maxReplySize, alignment: 16)
    defer { memory.deallocate() }
    var request = RequestCursor(segments)
    var writer = ReplyWriter(memory)
    guard case .replied(let n) = server.handle(&request, &writer, later: { _ in }) else { return nil }
    return Array(UnsafeRawBufferPointer(rebasing: memory[0..<n]))
}

/// WRITE taken from a transport's scattered request, without gathering it.
@Suite struct WriteInPlaceTests {
    @Test func scatteredWritesLandLikeContiguousOnes() throws {
        let s = try EngineSession()
        let server = initializedServer(s.guest)
        let (e, o) = try s.guest.create(s.request, parent: 1, name: Array("w".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        var rng = SystemRandomNumberGenerator()
        var model = [UInt8]()
        for round in 0..<40 {
            let offset = Int.random(in: 0...30_000, using: &rng)
            let data = (0..<Int.random(in: 1...20_000, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            var w = fuse_write_in()
            w.fh = o.handle; w.offset = UInt64(offset); w.size = UInt32(data.count)
            let m = fuseMessage(FUSE_WRITE, unique: UInt64(round), nodeid: e.nodeid, body: bytes(of: w) + data)
            // Cut the message at random points (inside the header too), as a descriptor chain may.
            var cuts = (0..<Int.random(in: 0...6, using: &rng)).map { _ in Int.random(in: 0...m.count, using: &rng) }
            cuts = ([0] + cuts + [m.count]).sorted()
            let reply = try #require(m.withUnsafeBytes { whole in
                served(server, zip(cuts, cuts.dropFirst()).map { UnsafeRawBufferPointer(rebasing: whole[$0..<$1]) })
            })
            let out = reply.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }
            #expect(out.error == 0 && out.unique == UInt64(round))
            #expect(reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: fuse_write_out.self) }.size == UInt32(data.count))
            if model.count < offset + data.count { model += [UInt8](repeating: 0, count: offset + data.count - model.count) }
            model.replaceSubrange(offset..<(offset + data.count), with: data)
        }
        var back = [UInt8](repeating: 0, count: model.count + 10)
        let n = try back.withUnsafeMutableBytes { try s.fs.read(e.nodeid, offset: 0, into: $0) }
        #expect(n == model.count)
        #expect(Array(back.prefix(n)) == model)
        // A WRITE claiming more data than it carries is refused, in pieces as whole.
        var w = fuse_write_in()
        w.fh = o.handle; w.size = 100
        let short = fuseMessage(FUSE_WRITE, unique: 5, nodeid: e.nodeid, body: bytes(of: w) + [1, 2, 3])
        let refused = short.withUnsafeBytes { whole in
            served(server, [UnsafeRawBufferPointer(rebasing: whole[0..<50]), UnsafeRawBufferPointer(rebasing: whole[50...])])
        }
        #expect(refused?.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }.error == -EINVAL)
    }
}
