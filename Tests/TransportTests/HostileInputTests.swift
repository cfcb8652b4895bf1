import CFUSE
import Glibc
import Testing
@testable import FUSEProtocol
@testable import VhostUser

/// Operations that answer everything with a fixed result, so the decoder and
/// encoder are exercised on their own.
final class StubOperations: FUSEOperations, @unchecked Sendable {
    let attrs = FUSEAttributes(ino: 2, size: 0, blocks: 0, atime: (0, 0), mtime: (0, 0), ctime: (0, 0), mode: 0o100644,
                               nlink: 1, uid: 0, gid: 0, rdev: 0, blockSize: 4096)
    var entry: FUSEEntry { FUSEEntry(nodeid: 2, generation: 1, attributes: attrs, entryTimeout: 1, attributeTimeout: 1) }
    func initialize(capabilities: UInt64) -> UInt64 { capabilities }
    func destroy() {}
    func lookup(_ r: FUSERequest, parent: UInt64, name: UnsafeRawBufferPointer) throws -> FUSEEntry { entry }
    func forget(nodeid: UInt64, count: UInt64) {}
    func getattr(_ r: FUSERequest, nodeid: UInt64, handle: UInt64?) throws -> (FUSEAttributes, Double) { onGetattr?(); return (attrs, 1) }
    func setattr(_ r: FUSERequest, nodeid: UInt64, _ changes: FUSESetattr) throws -> (FUSEAttributes, Double) { (attrs, 1) }
    func readlink(_ r: FUSERequest, nodeid: UInt64) throws -> [UInt8] { [0x61] }
    func symlink(_ r: FUSERequest, parent: UInt64, name: [UInt8], target: [UInt8]) throws -> FUSEEntry { entry }
    func mknod(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, rdev: UInt32, umask: UInt32) throws -> FUSEEntry { entry }
    func mkdir(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, umask: UInt32) throws -> FUSEEntry { entry }
    func unlink(_ r: FUSERequest, parent: UInt64, name: [UInt8]) throws {}
    func rmdir(_ r: FUSERequest, parent: UInt64, name: [UInt8]) throws {}
    func rename(_ r: FUSERequest, parent: UInt64, name: [UInt8], newParent: UInt64, newName: [UInt8], flags: UInt32) throws {}
    func link(_ r: FUSERequest, nodeid: UInt64, newParent: UInt64, newName: [UInt8]) throws -> FUSEEntry { entry }
    func open(_ r: FUSERequest, nodeid: UInt64, flags: UInt32, killSuidGid: Bool) throws -> FUSEOpenResult { FUSEOpenResult(handle: 1) }
    func create(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, flags: UInt32, umask: UInt32) throws -> (FUSEEntry, FUSEOpenResult) { (entry, FUSEOpenResult(handle: 1)) }
    func tmpfile(_ r: FUSERequest, parent: UInt64, mode: UInt32, flags: UInt32, umask: UInt32) throws -> (FUSEEntry, FUSEOpenResult) { (entry, FUSEOpenResult(handle: 1)) }
    func read(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, into: UnsafeMutableRawBufferPointer) throws -> Int { min(into.count, 10) }
    func write(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer, flags: UInt32) throws -> Int { data.count }
    func flush(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, lockOwner: UInt64) throws {}
    func release(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, flags: UInt32, releaseFlags: UInt32, lockOwner: UInt64) throws {}
    /// Called by FSYNC and GETATTR (tests of where requests run).
    var onFsync: (@Sendable () -> Void)?
    var onGetattr: (@Sendable () -> Void)?
    func fsync(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, dataOnly: Bool) throws { onFsync?() }
    /// Called with the size of each group of FSYNCs committed together.
    var onFsyncGroup: (@Sendable (Int) -> Void)?
    func fsync(group: [FUSEFsync], errors: inout [Int32]) {
        onFsyncGroup?(group.count)
        for i in group.indices { onFsync?(); errors[i] = 0 }
    }
    func opendir(_ r: FUSERequest, nodeid: UInt64, flags: UInt32) throws -> FUSEOpenResult { FUSEOpenResult(handle: 1) }
    func readdir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, limit: Int) throws -> [FUSEDirectoryEntry] {
        offset > 3 ? [] : [FUSEDirectoryEntry(ino: 2, nextOffset: offset + 1, type: 8, name: Array("name".utf8))]
    }
    func readdirplusEntry(_ r: FUSERequest, parent: UInt64, entry e: FUSEDirectoryEntry) throws -> FUSEEntry? { entry }
    func releasedir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64) throws {}
    func fsyncdir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, dataOnly: Bool) throws {}
    func statfs(_ r: FUSERequest, nodeid: UInt64) throws -> FUSEStatistics {
        FUSEStatistics(blocks: 1, freeBlocks: 1, availableBlocks: 1, files: 1, freeFiles: 1, blockSize: 4096, nameLength: 255, fragmentSize: 4096)
    }
    func setxattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8], value: UnsafeRawBufferPointer, flags: UInt32) throws {}
    func getxattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8]) throws -> [UInt8] { [1, 2, 3] }
    func listxattr(_ r: FUSERequest, nodeid: UInt64) throws -> [[UInt8]] { [Array("user.a".utf8)] }
    func removexattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8]) throws {}
    func access(_ r: FUSERequest, nodeid: UInt64, mask: UInt32) throws {}
    func getlk(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, owner: UInt64, lock: FUSELock, flock: Bool) throws -> FUSELock { lock }
    func setlk(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, owner: UInt64, lock: FUSELock, flock: Bool, wait: Bool,
               reply: @escaping @Sendable (Int32) -> Void) { reply(0) }
    func interrupt(unique: UInt64) {}
    func fallocate(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, length: UInt64, mode: UInt32) throws {}
    func lseek(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, whence: UInt32) throws -> UInt64 { offset }
    func copyFileRange(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, toNode: UInt64, toHandle: UInt64,
                       toOffset: UInt64, length: UInt64, flags: UInt64) throws -> UInt64 { length }
    func syncfs(_ r: FUSERequest) throws {}
}

func message(opcode: UInt32, unique: UInt64, body: [UInt8]) -> [UInt8] {
    var h = fuse_in_header()
    h.len = UInt32(MemoryLayout<fuse_in_header>.size + body.count)
    h.opcode = opcode
    h.unique = unique
    h.nodeid = 1
    var out = withUnsafeBytes(of: &h) { Array($0) }
    out += body
    return out
}

final class Replies: @unchecked Sendable {
    var all: [[UInt8]] = []
}

func initialized() -> FUSEServer {
    let server = FUSEServer(operations: StubOperations())
    var i = fuse_init_in()
    i.major = 7; i.minor = 38; i.flags = 0xFFFF_FFFF; i.flags2 = 0xFFFF_FFFF
    let m = message(opcode: FUSE_INIT.rawValue, unique: 1, body: withUnsafeBytes(of: &i) { Array($0) })
    m.withUnsafeBytes { server.handle($0) { _ in } }
    return server
}

@Suite struct HostileInputTests {
    @Test func initNegotiatesOnlyWhatBothOffer() throws {
        let server = FUSEServer(operations: StubOperations())
        var i = fuse_init_in()
        i.major = 7; i.minor = 38; i.flags = UInt32(FUSE_ASYNC_READ | FUSE_POSIX_LOCKS | FUSE_WRITEBACK_CACHE)
        let replies = Replies()
        let m = message(opcode: FUSE_INIT.rawValue, unique: 9, body: withUnsafeBytes(of: &i) { Array($0) })
        m.withUnsafeBytes { server.handle($0) { replies.all.append($0) } }
        #expect(server.initialized)
        #expect(server.negotiated == UInt64(FUSE_ASYNC_READ | FUSE_POSIX_LOCKS))   // no writeback cache: not offered
        let out = replies.all[0].withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: fuse_init_out.self) }
        #expect(out.major == 7 && out.max_write == 1 << 20)
    }

    @Test func requestsBeforeInitAreRefused() throws {
        let server = FUSEServer(operations: StubOperations())
        let replies = Replies()
        message(opcode: FUSE_GETATTR.rawValue, unique: 5, body: [UInt8](repeating: 0, count: 16)).withUnsafeBytes {
            server.handle($0) { replies.all.append($0) }
        }
        let h = replies.all[0].withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }
        #expect(h.unique == 5 && h.error == -EIO)
    }

    /// Every opcode with its argument cut at every length: an error reply (or
    /// none for FORGET-like requests), the right unique, never a crash.
    @Test func truncatedArgumentsGetErrorReplies() throws {
        let server = initialized()
        for opcode in UInt32(1)...52 where opcode != FUSE_INIT.rawValue && opcode != FUSE_DESTROY.rawValue {
            for length in 0..<40 {
                let replies = Replies()
                let unique = UInt64(opcode) << 16 | UInt64(length)
                // Non-NUL bytes so names never terminate early.
                message(opcode: opcode, unique: unique, body: [UInt8](repeating: 0x41, count: length)).withUnsafeBytes {
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
        let server = initialized()
        var m = message(opcode: FUSE_GETATTR.rawValue, unique: 77, body: [UInt8](repeating: 0, count: 16))
        m.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(4096), as: UInt32.self) }   // claims more than it has
        let replies = Replies()
        m.withUnsafeBytes { server.handle($0) { replies.all.append($0) } }
        #expect(replies.all.count == 1)
        #expect(replies.all[0].withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }.error == -EINVAL)
    }

    @Test func randomMessagesNeverCrash() throws {
        let server = initialized()
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
        let server = initialized()
        for opcode: UInt32 in [FUSE_IOCTL.rawValue, FUSE_POLL.rawValue, FUSE_BMAP.rawValue, 999, 4096] {
            let replies = Replies()
            message(opcode: opcode, unique: 3, body: [UInt8](repeating: 0, count: 64)).withUnsafeBytes {
                server.handle($0) { replies.all.append($0) }
            }
            #expect(replies.all.first?.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }.error == -ENOSYS)
        }
    }
}

/// A guest memory of one region backed by a local buffer, and a queue in it.
final class FakeGuest {
    let size = 1 << 20
    let buffer: UnsafeMutableRawPointer
    let memory: GuestMemory
    let queue = Virtqueue(index: 1)
    static let gpa: UInt64 = 0x10_0000
    // Layout: descriptors at 0, available ring at 64 KiB, used ring at 128 KiB, data from 256 KiB.
    init(queueSize: UInt16 = 8) {
        buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        memset(buffer, 0, size)
        memory = GuestMemory(regions: [GuestMemory.Region(guestPhysical: Self.gpa, size: UInt64(size), userAddress: 0x7000_0000,
                                                          mapping: buffer, mappingSize: size, offsetInMapping: 0)])
        queue.size = queueSize
        queue.descriptorAddress = 0x7000_0000
        queue.availableAddress = 0x7000_0000 + 65536
        queue.usedAddress = 0x7000_0000 + 131072
        _ = queue.attach(memory)
    }
    deinit { buffer.deallocate() }

    func descriptor(_ i: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16, table: Int = 0) {
        let d = buffer + table + 16 * i
        d.storeBytes(of: address, as: UInt64.self)
        d.storeBytes(of: length, toByteOffset: 8, as: UInt32.self)
        d.storeBytes(of: flags, toByteOffset: 12, as: UInt16.self)
        d.storeBytes(of: next, toByteOffset: 14, as: UInt16.self)
    }

    func offer(_ head: UInt16) {
        let avail = buffer + 65536
        let idx = avail.load(fromByteOffset: 2, as: UInt16.self)
        avail.storeBytes(of: head, toByteOffset: 4 + 2 * Int(idx % queue.size), as: UInt16.self)
        avail.storeBytes(of: idx &+ 1, toByteOffset: 2, as: UInt16.self)
    }

    var data: UInt64 { Self.gpa + 262_144 }
}

@Suite struct DescriptorWalkerTests {
    @Test func aWellFormedChainSplitsReadableAndWritable() throws {
        let g = FakeGuest()
        g.descriptor(0, address: g.data, length: 40, flags: Virtqueue.descriptorNext, next: 1)
        g.descriptor(1, address: g.data + 4096, length: 100, flags: Virtqueue.descriptorWrite, next: 0)
        g.offer(0)
        let c = try #require(try g.queue.pop())
        #expect(c.readableBytes == 40 && c.writableBytes == 100)
        #expect(try g.queue.pop() == nil)
        g.queue.push(c.head, length: 16)
        #expect((g.buffer + 131072).load(fromByteOffset: 2, as: UInt16.self) == 1)
    }

    @Test func hostileChainsAreRefused() throws {
        // A loop.
        var g = FakeGuest()
        g.descriptor(0, address: g.data, length: 8, flags: Virtqueue.descriptorNext, next: 1)
        g.descriptor(1, address: g.data, length: 8, flags: Virtqueue.descriptorNext, next: 0)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        // An address outside guest memory, and one that runs past its end.
        g = FakeGuest()
        g.descriptor(0, address: 0xdead_0000_0000, length: 8, flags: 0, next: 0)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        g = FakeGuest()
        g.descriptor(0, address: FakeGuest.gpa + UInt64(g.size) - 4, length: 8, flags: 0, next: 0)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        // A next index beyond the table, a head beyond the queue.
        g = FakeGuest()
        g.descriptor(0, address: g.data, length: 8, flags: Virtqueue.descriptorNext, next: 200)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        g = FakeGuest()
        g.offer(9)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        // Readable after writable.
        g = FakeGuest()
        g.descriptor(0, address: g.data, length: 8, flags: Virtqueue.descriptorWrite | Virtqueue.descriptorNext, next: 1)
        g.descriptor(1, address: g.data, length: 8, flags: 0, next: 0)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        // Indirect: a table of odd length, a nested indirect, and a good one.
        g = FakeGuest()
        g.descriptor(0, address: g.data, length: 20, flags: Virtqueue.descriptorIndirect, next: 0)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        g = FakeGuest()
        g.descriptor(0, address: g.data, length: 32, flags: Virtqueue.descriptorIndirect, next: 0)
        g.descriptor(0, address: g.data + 8192, length: 32, flags: Virtqueue.descriptorIndirect, next: 0, table: 262_144)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        g = FakeGuest()
        g.descriptor(0, address: g.data, length: 32, flags: Virtqueue.descriptorIndirect, next: 0)
        g.descriptor(0, address: g.data + 8192, length: 40, flags: Virtqueue.descriptorNext, next: 1, table: 262_144)
        g.descriptor(1, address: g.data + 12288, length: 64, flags: Virtqueue.descriptorWrite, next: 0, table: 262_144)
        g.offer(0)
        let c = try #require(try g.queue.pop())
        #expect(c.readableBytes == 40 && c.writableBytes == 64)
    }

    @Test func randomDescriptorTablesNeverCrash() throws {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let g = FakeGuest(queueSize: 16)
            for i in 0..<16 {
                let address = Bool.random(using: &rng) ? g.data + UInt64.random(in: 0..<600_000, using: &rng) : UInt64.random(in: 0...UInt64.max, using: &rng)
                g.descriptor(i, address: address, length: UInt32.random(in: 0...70_000, using: &rng),
                             flags: UInt16.random(in: 0...7, using: &rng), next: UInt16.random(in: 0...20, using: &rng))
            }
            for _ in 0..<4 { g.offer(UInt16.random(in: 0...17, using: &rng)) }
            for _ in 0..<4 {
                do {
                    guard let c = try g.queue.pop() else { break }
                    // Whatever was accepted lies inside the region.
                    for r in c.readable { #expect(r.baseAddress! >= UnsafeRawPointer(g.buffer) && r.baseAddress! + r.count <= UnsafeRawPointer(g.buffer + g.size)) }
                    for w in c.writable { #expect(UnsafeRawPointer(w.baseAddress!) >= UnsafeRawPointer(g.buffer) && UnsafeRawPointer(w.baseAddress! + w.count) <= UnsafeRawPointer(g.buffer + g.size)) }
                } catch { break }
            }
        }
    }
}

/// Notification suppression, as the guest driver evaluates it.
@Suite struct KickSuppressionTests {
    /// The driver's vring_need_event: kick if the new index passed the event index.
    func guestWouldKick(_ g: FakeGuest, old: UInt16, new: UInt16) -> Bool {
        if g.queue.eventIndex {
            let event = (g.buffer + 131072).load(fromByteOffset: 4 + 8 * Int(g.queue.size), as: UInt16.self)
            return (new &- event &- 1) < (new &- old)
        }
        return (g.buffer + 131072).load(as: UInt16.self) & 1 == 0   // VRING_USED_F_NO_NOTIFY
    }

    @Test(arguments: [true, false]) func pollingTurnsKicksOffAndBackOn(eventIndex: Bool) throws {
        let g = FakeGuest()
        g.queue.eventIndex = eventIndex
        g.descriptor(0, address: g.data, length: 40, flags: 0, next: 0)
        for round in 0..<3 {
            g.queue.setKicks(enabled: true)
            let before = UInt16(round * 2)
            g.offer(0)
            #expect(guestWouldKick(g, old: before, new: before &+ 1), "kicks wanted while the worker sleeps")
            _ = try #require(try g.queue.pop())
            g.queue.push(0, length: 0)
            // The worker polls: the guest's next requests need no kick.
            g.queue.setKicks(enabled: false)
            g.offer(0)
            #expect(!guestWouldKick(g, old: before &+ 1, new: before &+ 2))
            #expect(g.queue.hasMore)
            _ = try #require(try g.queue.pop())
            g.queue.push(0, length: 0)
        }
    }
}

@Suite struct BlockingRequestTests {
    func request(_ opcode: UInt32, size: UInt32? = nil) -> [UInt8] {
        var body: [UInt8] = []
        if let size {
            var r = fuse_read_in()
            r.size = size
            body = withUnsafeBytes(of: &r) { Array($0) }
        }
        return message(opcode: opcode, unique: 1, body: body)
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

@Suite struct PollWindowTests {
    @Test func growsToCoverAQuickGuestAndShrinksForASlowOne() {
        var p = PollWindow(limit: 50_000)
        var now: UInt64 = 1_000_000
        #expect(p.window == 0)
        // Requests 20 µs after each answer: after one wake-up the window covers them.
        p.answered(at: now); now += 20_000
        p.wokeUp(at: now)
        #expect(p.window >= 20_000 && p.window <= 50_000)
        p.polled(success: true)
        #expect(p.window >= 20_000)
        // A guest that pauses for long: misses halve the window down to nothing.
        for _ in 0..<10 { p.polled(success: false) }
        #expect(p.window == 0)
        // Gaps beyond the limit never open it.
        p.answered(at: now); now += 400_000
        p.wokeUp(at: now)
        #expect(p.window == 0)
        // Never wider than the limit; no polling at all with limit 0.
        p.answered(at: now); now += 49_000
        p.wokeUp(at: now)
        #expect(p.window == 50_000)
        var off = PollWindow(limit: 0)
        off.answered(at: 1); off.wokeUp(at: 2)
        #expect(off.window == 0)
    }
}

@Suite struct ScatteredPiecesTests {
    @Test func piecesAreTheSameBytesAsASliceOfTheWhole() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            let sizes = (0..<Int.random(in: 0...6, using: &rng)).map { _ in Int.random(in: 0...40, using: &rng) }
            let total = sizes.reduce(0, +)
            let whole = (0..<total).map { UInt8(truncatingIfNeeded: $0) }
            whole.withUnsafeBytes { buffer in
                var start = 0
                let segments = sizes.map { n -> UnsafeRawBufferPointer in
                    defer { start += n }
                    return UnsafeRawBufferPointer(rebasing: buffer[start..<(start + n)])
                }
                let skip = Int.random(in: 0...(total + 5), using: &rng), count = Int.random(in: 0...50, using: &rng)
                var cursor = RequestCursor(segments)
                guard skip <= total else {
                    #expect(throws: FUSEWireError.self) { try cursor.skip(skip) }
                    return
                }
                try? cursor.skip(skip)
                if count > total - skip { #expect(throws: FUSEWireError.self) { try cursor.segments(count) } }
                let got = try? cursor.segments(min(count, total - skip))
                let flat = got.map { Array($0.joined()) }
                #expect(flat == Array(whole[skip..<min(total, skip + count)]))
                #expect(got?.allSatisfy { $0.count > 0 } == true)
            }
        }
    }
}

@Suite struct MemoryTableChangeTests {
    /// A chain still in flight when a new memory table comes is walked again:
    /// its buffers are then found in the new mappings, not the old ones.
    @Test func aChainInFlightIsFoundAgainInTheNewMappings() throws {
        let g = FakeGuest()
        g.descriptor(0, address: g.data, length: 40, flags: Virtqueue.descriptorNext, next: 1)
        g.descriptor(1, address: g.data + 4096, length: 100, flags: Virtqueue.descriptorWrite, next: 0)
        g.offer(0)
        let first = try #require(try g.queue.pop())
        // The same guest memory, mapped elsewhere now (as after SET_MEM_TABLE).
        let copy = UnsafeMutableRawPointer.allocate(byteCount: g.size, alignment: 4096)
        defer { copy.deallocate() }
        copy.copyMemory(from: g.buffer, byteCount: g.size)
        let moved = GuestMemory(regions: [GuestMemory.Region(guestPhysical: FakeGuest.gpa, size: UInt64(g.size), userAddress: 0x7000_0000,
                                                             mapping: copy, mappingSize: g.size, offsetInMapping: 0)])
        #expect(g.queue.attach(moved))
        let again = try g.queue.walk(first.head)
        #expect(again.readableBytes == 40 && again.writableBytes == 100)
        let w = try #require(again.writable.first?.baseAddress)
        #expect(w >= copy && w < copy + g.size)
        #expect(first.writable.first?.baseAddress.map { $0 >= g.buffer && $0 < g.buffer + g.size } == true)
    }
}
