// libFuzzer target: the vhost-user control plane of a real VhostUserBackend
// (a Unix socket, SCM_RIGHTS descriptors, memfd guest memory, queue workers)
// in front of the real pmfs operations. Built and run by tools/fuzz/run.sh;
// see tools/fuzz/README.md.
//
// One input is one front-end connection: a sequence of commands, each a byte
// choosing what to do next (Command) followed by the bytes it consumes
// (missing bytes read as 0). Commands send control messages built from input
// fields but shaped like the real ones (memory tables, ring addresses, kick
// and call descriptors of every kind: eventfds, pipes, memfds, none, too
// many), raw messages of any code, size and flags, requests posted on the
// rings and kicked, raw writes into guest memory and short pauses, so the
// workers run while control messages change their rings.
// Checked: a reply the protocol always owes (GET_*) arrives within 2 s; after
// the connection closes, a well-behaved front end connects, negotiates, and a
// FUSE INIT and GETATTR of the root are answered, so no input leaves the
// daemon crashed, hung or unable to serve the next guest.
import CVhost
import FUSEProtocol
import Foundation
import Glibc
import Logging
import PMFSConcurrency
import PMFSCore
import PMFSData
import PMFSMetadata
import PMFSServer
import Synchronization
import VhostUser
import VhostUserFrontEnd

private let memoryBytes = 256 << 10
private let ringStride = 16 << 10
private let harnessQueueSize: UInt16 = 256
private let replyWait: Int32 = 2000

/// Reports and aborts; with PMFS_FUZZ_BACKTRACES=1 first prints every
/// thread's stack (gdb), which shows where a hung back end waits.
private func fail(_ why: String) -> Never {
    ("fuzz-vhost: " + why + "\n").utf8CString.withUnsafeBufferPointer { _ = write(2, $0.baseAddress, $0.count - 1) }
    if getenv("PMFS_FUZZ_BACKTRACES") != nil {
        _ = system("gdb -p \(getpid()) -batch -ex 'thread apply all bt' >&2 2>/dev/null; ls -l /proc/\(getpid())/fd >&2; ss -xap | grep 'pid=\(getpid()),' >&2")
    }
    abort()
}

/// When the current liveness check started (monotonic ns; 0: none running).
/// With PMFS_FUZZ_BACKTRACES=1 a watchdog prints every stack once when a
/// check has waited 3 s, while the back end is still stuck.
let livenessStart = Atomic<UInt64>(0)

private func startWatchdog() {
    Thread {
        var dumped = false
        while true {
            usleep(100_000)
            let start = livenessStart.load(ordering: .relaxed)
            guard start != 0, !dumped, monotonicNanoseconds() - start > 3_000_000_000 else { continue }
            dumped = true
            ("fuzz-vhost: the liveness check has waited 3 s; stacks now:\n").utf8CString.withUnsafeBufferPointer { _ = write(2, $0.baseAddress, $0.count - 1) }
            _ = system("gdb -p \(getpid()) -batch -ex 'thread apply all bt' >&2 2>/dev/null")
        }
    }.start()
}

// MARK: the daemon under test

/// pmfsd's guest side in one process: a pool and a data file on /dev/shm, a
/// FileDataTier, one session's operations and a vhost-user back end serving
/// one front end after the other on its own thread.
final class Daemon: @unchecked Sendable {
    let socketPath: String
    let poolPath: String
    let dataPath: String
    let backend: VhostUserBackend

    init() throws {
        setenv("PMEM_IS_PMEM_FORCE", "1", 1)
        setenv("PMEMOBJ_CONF", "sds.at_create=0", 1)
        let tag = "pmfs-fuzz-\(getpid()).vhost"
        poolPath = "/dev/shm/\(tag).pool"
        dataPath = "/dev/shm/\(tag).data"
        socketPath = "/dev/shm/\(tag).sock"
        unlink(poolPath)
        let blocks: UInt64 = 256
        let fd = open(dataPath, O_CREAT | O_RDWR | O_TRUNC, 0o600)
        guard fd >= 0 else { fail("cannot create \(dataPath)") }
        ftruncate(fd, off_t(blocks * 4096))
        close(fd)
        let metadata = try MetadataStore.format(poolPath: poolPath, options: MetadataStore.FormatOptions(poolSize: 16 << 20, dataBlocks: blocks))
        try DataDeviceHeader(blockSize: 4096, blockCount: blocks, fsUUID: metadata.uuid, dataUUID: metadata.dataUUID).write(to: dataPath)
        var options = FileDataTier.Options()
        options.cacheBytes = 1 << 20
        let fs = try FileDataTier(metadata: metadata, device: try DataDevice(path: dataPath), options: options)
        let operations = PMFSOperations(metadata: metadata, fs: fs)
        backend = try VhostUserBackend(socketPath: socketPath, server: FUSEServer(operations: operations), requestQueues: 2)
        backend.requestThreads = 2
        backend.onSessionEnd = { operations.endSession() }
        let b = backend
        Thread { b.serve() }.start()
        atexit {
            if let d = daemon { unlink(d.poolPath); unlink(d.dataPath); unlink(d.socketPath) }
            // Shows the shrink command reached the SIGBUS guard.
            let line = "fuzz-vhost: guest memory faults caught by the guard: \(cvhost_guard_fault_count())\n"
            _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
        }
    }

    /// A well-behaved front end gets a working device: the daemon survived
    /// the input and is ready for the next guest.
    func checkServes() {
        var o = VhostUserFrontEnd.Options()
        o.requestQueues = 1
        o.queueSize = 16
        o.slotsPerQueue = 2
        o.slotBytes = 8192
        livenessStart.store(monotonicNanoseconds(), ordering: .relaxed)
        defer { livenessStart.store(0, ordering: .relaxed) }
        do {
            let frontEnd = try VhostUserFrontEnd(socketPath: socketPath, options: o, connectTimeout: 5)
            let client = FUSEClient(frontEnd)
            _ = try client.initialize()
            let attributes = try client.getattr(1)
            guard attributes.attr.ino == 1 else { fail("GETATTR of the root answered inode \(attributes.attr.ino)") }
        } catch {
            fail("after the input, a well-behaved front end is not served: \(error)")
        }
    }
}

nonisolated(unsafe) var daemon: Daemon?
nonisolated(unsafe) var guest: GuestMemory?

// MARK: the hostile front end

/// The harness's guest memory: one memfd, mapped here, handed to the back end
/// in memory tables. Queue q's rings lie at q * 16 KiB (descriptors, then the
/// available ring at +4 KiB and the used ring at +8 KiB); request buffers from
/// 64 KiB.
final class GuestMemory {
    let fd: Int32
    let base: UnsafeMutableRawPointer
    /// How much of the memfd is there: a shrink command cuts it under the
    /// back end's mapping, and this side then touches only what is left.
    private(set) var length = memoryBytes
    init() {
        fd = cvhost_memfd("pmfs-fuzz-guest", UInt64(memoryBytes))
        guard fd >= 0, let p = mmap(nil, memoryBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            fail("cannot map guest memory")
        }
        base = p
    }
    var userAddress: UInt64 { UInt64(UInt(bitPattern: base)) }
    func shrink(to bytes: Int) {
        guard bytes < length, ftruncate(fd, off_t(bytes)) == 0 else { return }
        length = bytes
    }
    /// Whole again (the lost pages come back as zeros) for the next input.
    func restore() {
        guard length < memoryBytes else { return }
        guard ftruncate(fd, off_t(memoryBytes)) == 0 else { fail("cannot restore the guest memory's size") }
        length = memoryBytes
    }
    func descriptors(_ q: Int) -> Int { q * ringStride }
    func available(_ q: Int) -> Int { q * ringStride + 4096 }
    func used(_ q: Int) -> Int { q * ringStride + 8192 }
    func request(_ q: Int) -> Int { (64 << 10) + q * 8192 }
    func store<T>(_ value: T, at offset: Int) {
        guard holds(offset, MemoryLayout<T>.size) else { return }
        (base + offset).storeBytes(of: value, as: T.self)
    }
    func loadU16(_ offset: Int) -> UInt16 { holds(offset, 2) ? base.loadUnaligned(fromByteOffset: offset, as: UInt16.self) : 0 }
    func holds(_ offset: Int, _ count: Int) -> Bool { offset >= 0 && offset + count <= length }
}

/// The input, read field by field; past its end every field is 0.
struct InputReader {
    let bytes: UnsafeRawBufferPointer
    var position = 0
    var atEnd: Bool { position >= bytes.count }
    mutating func u8() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }
    mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in u8() } }
    /// One of `choices`, or (for the last selector value) any 64-bit value.
    mutating func pick(_ choices: [UInt64]) -> UInt64 {
        let i = Int(u8()) % (choices.count + 1)
        return i < choices.count ? choices[i] : u64()
    }
}

enum Command: UInt8, CaseIterable {
    case bringUp, memoryTable, ringSize, ringAddresses, ringBase, ringDescriptor, enable, lifecycle, raw, post, poke, pause, shrink
}

/// Descriptors the harness can attach to a message.
enum DescriptorKind: UInt8, CaseIterable {
    case none, eventfd, pipe, memfd, smallMemfd, regularFile, socket, two
}

/// One connection to the back end, driven by one input.
final class HostileFrontEnd {
    let socket: Int32
    let memory: GuestMemory
    var kicks: [Int: Int32] = [:]
    var owned: [Int32] = []
    /// After a raw message whose claimed size differs from what was sent the
    /// stream is out of step: owed replies can no longer be matched.
    var desynchronized = false
    var closed = false

    init(socketPath: String, memory: GuestMemory) throws {
        socket = try VhostUserFrontEnd.connect(socketPath, timeout: 5)
        self.memory = memory
        memory.restore()
        memset(memory.base, 0, memoryBytes)
    }

    func finish() {
        shutdown(socket, Int32(SHUT_RDWR))
        close(socket)
        owned.forEach { close($0) }
        kicks.values.forEach { close($0) }
    }

    // MARK: descriptors

    func descriptors(_ kind: DescriptorKind) -> [Int32] {
        switch kind {
        case .none: return []
        case .eventfd: return [keep(cvhost_eventfd())]
        case .pipe:
            var p: [Int32] = [-1, -1]
            guard pipe(&p) == 0 else { return [] }
            owned += p
            return [p[0]]
        case .memfd: return [memory.fd]
        case .smallMemfd: return [keep(cvhost_memfd("pmfs-fuzz-small", 4096))]
        case .regularFile:
            let fd = open(daemon!.dataPath, O_RDONLY)
            return [keep(fd)]
        case .socket:
            var pair: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0 else { return [] }
            owned += pair
            return [pair[0]]
        case .two: return [keep(cvhost_eventfd()), keep(cvhost_eventfd())]
        }
    }

    private func keep(_ fd: Int32) -> Int32 { if fd >= 0 { owned.append(fd) }; return fd }

    // MARK: messages

    func send(_ code: UInt32, flags: UInt32 = VhostUserMessage.version, _ payload: [UInt8], fds: [Int32] = [], claimedSize: UInt32? = nil) {
        guard !closed else { return }
        var message = VhostUserMessage.header(code, flags: flags, size: claimedSize ?? UInt32(payload.count))
        message += payload
        let valid = fds.filter { $0 >= 0 }
        let n = message.withUnsafeBytes { b in valid.withUnsafeBufferPointer { cvhost_send_with_fds(socket, b.baseAddress, b.count, $0.baseAddress, Int32($0.count)) } }
        if n != message.count { closed = true; return }
        if let claimedSize, claimedSize != UInt32(payload.count) { desynchronized = true }
        let owed: Set<UInt32> = [1, 11, 15, 17, 36]
        drain(waitMilliseconds: owed.contains(code) && !desynchronized ? replyWait : 0, owed: owed.contains(code) && !desynchronized)
    }

    func send(_ request: VhostUserMessage.Request, needReply: Bool = false, _ payload: [UInt8], fds: [Int32] = []) {
        send(request.rawValue, flags: VhostUserMessage.version | (needReply ? VhostUserMessage.needReply : 0), payload, fds: fds)
    }

    /// Reads whatever the back end sent; when a reply is owed, waits for it.
    private func drain(waitMilliseconds: Int32, owed: Bool) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var first = true
        while true {
            let ready = cvhost_wait2(socket, -1, first ? waitMilliseconds : 0)
            if ready <= 0 {
                if first && owed { fail("no reply within \(replyWait) ms to a message that is always answered (socket \(socket))") }
                return
            }
            first = false
            let n = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n == 0 { closed = true; return }
            if n < 0 { return }
        }
    }

    // MARK: commands

    func run(_ input: inout InputReader) {
        var steps = 0
        while !input.atEnd && !closed && steps < 256 {
            steps += 1
            let command = Command.allCases[Int(input.u8()) % Command.allCases.count]
            switch command {
            case .bringUp: bringUp(&input)
            case .memoryTable: memoryTable(&input)
            case .ringSize:
                let q = queue(&input)
                send(.setVringNum, needReply: input.u8() & 1 != 0, VhostUserMessage.u32Pair(q, UInt32(truncatingIfNeeded: input.pick([0, 1, 3, 16, 256, 1024, 32768, 65536]))))
            case .ringAddresses: ringAddresses(&input)
            case .ringBase:
                let q = queue(&input)
                if input.u8() & 1 == 0 {
                    send(.setVringBase, VhostUserMessage.u32Pair(q, UInt32(truncatingIfNeeded: input.pick([0, 1, 255, 65535, 65536]))))
                } else {
                    send(.getVringBase, VhostUserMessage.u32Pair(q, 0))
                }
            case .ringDescriptor: ringDescriptor(&input)
            case .enable:
                let q = queue(&input)
                send(.setVringEnable, VhostUserMessage.u32Pair(q, UInt32(input.u8() & 1)))
            case .lifecycle: lifecycle(&input)
            case .raw: raw(&input)
            case .post: post(&input)
            case .poke:
                let offset = Int(input.u16()) * 4 % memoryBytes
                for (i, b) in input.bytes(Int(input.u8() % 64)).enumerated() { memory.store(b, at: offset + i) }
            case .pause:
                usleep(UInt32(input.u8() % 4) * 200)
            case .shrink:
                // Cut the memory under the back end's mapping (as a front end
                // may ftruncate its memfd): it must drop only this connection.
                memory.shrink(to: Int(input.pick([0, 4096, 16 << 10, 64 << 10, 128 << 10]) % UInt64(memoryBytes)))
                for kick in kicks.values { _ = cvhost_eventfd_signal(kick) }
            }
        }
    }

    /// The queue a message names: mostly 0..2, sometimes far beyond.
    private func queue(_ input: inout InputReader) -> UInt32 {
        UInt32(truncatingIfNeeded: input.pick([0, 1, 2, 64, 65, 255]))
    }

    /// What QEMU sends to start a device with queues 0 and 1 (feature bits
    /// from the input, so some bring-ups leave protocol features out).
    private func bringUp(_ input: inout InputReader) {
        let featureMask = input.u8()
        send(.getFeatures, [])
        var features: UInt64 = 1 << 32 | 1 << 30
        if featureMask & 1 != 0 { features |= 1 << 29 }   // EVENT_IDX
        if featureMask & 2 != 0 { features |= 1 << 28 }   // INDIRECT_DESC
        if featureMask & 4 != 0 { features &= ~(1 << 30) }
        send(.setFeatures, VhostUserMessage.u64(features))
        send(.getProtocolFeatures, [])
        send(.setProtocolFeatures, VhostUserMessage.u64(featureMask & 8 != 0 ? 0 : 1 << 0 | 1 << 3))
        send(.setOwner, [])
        send(.setMemTable, VhostUserMessage.memoryTable(guestPhysical: 0, size: UInt64(memoryBytes), userAddress: memory.userAddress, mmapOffset: 0), fds: [memory.fd])
        for q in 0..<2 {
            let u = UInt32(q)
            send(.setVringNum, VhostUserMessage.u32Pair(u, UInt32(harnessQueueSize)))
            send(.setVringAddr, VhostUserMessage.ringAddresses(u, descriptors: memory.userAddress + UInt64(memory.descriptors(q)),
                                                             used: memory.userAddress + UInt64(memory.used(q)),
                                                             available: memory.userAddress + UInt64(memory.available(q))))
            send(.setVringBase, VhostUserMessage.u32Pair(u, 0))
            let call = cvhost_eventfd()
            owned.append(call)
            send(.setVringCall, VhostUserMessage.u64(UInt64(q)), fds: [call])
            let kick = cvhost_eventfd()
            if let old = kicks[q] { close(old) }
            kicks[q] = kick
            send(.setVringKick, VhostUserMessage.u64(UInt64(q)), fds: [kick])
            send(.setVringEnable, VhostUserMessage.u32Pair(u, 1))
        }
    }

    private func memoryTable(_ input: inout InputReader) {
        let regions = Int(input.u8() % 10)
        var payload = VhostUserMessage.u32Pair(UInt32(regions), input.u8() == 0xFF ? input.u32() : 0)
        var fds: [Int32] = []
        let size = UInt64(memoryBytes)
        for _ in 0..<regions {
            payload += VhostUserMessage.u64(input.pick([0, size, 1 << 32, UInt64.max - 4095]))
            payload += VhostUserMessage.u64(input.pick([size, size / 2, size * 2, 4096, 0, UInt64.max]))
            payload += VhostUserMessage.u64(input.pick([memory.userAddress, memory.userAddress + size, 0, UInt64.max - size + 1]))
            payload += VhostUserMessage.u64(input.pick([0, 4096, size, UInt64.max - 4095]))
            fds += descriptors(DescriptorKind.allCases[Int(input.u8()) % DescriptorKind.allCases.count])
        }
        if input.u8() & 3 == 3 { payload = Array(payload.prefix(Int(input.u8()) % (payload.count + 1))) }
        send(.setMemTable, needReply: input.u8() & 1 != 0, payload, fds: fds)
    }

    private func ringAddresses(_ input: inout InputReader) {
        let q = queue(&input)
        let k = Int(q % 3)
        let base = memory.userAddress
        func address(_ offset: Int) -> UInt64 {
            input.pick([base + UInt64(offset), base + UInt64(offset) + 1, base + UInt64(memoryBytes) - 2, 0, base + UInt64(memoryBytes)])
        }
        var payload = VhostUserMessage.u32Pair(q, input.u8() == 0xFF ? input.u32() : 0)
        payload += VhostUserMessage.u64(address(memory.descriptors(k)))
        payload += VhostUserMessage.u64(address(memory.used(k)))
        payload += VhostUserMessage.u64(address(memory.available(k)))
        payload += VhostUserMessage.u64(input.u8() == 0xFF ? input.u64() : 0)
        send(.setVringAddr, needReply: input.u8() & 1 != 0, payload)
    }

    /// SET_VRING_KICK, CALL or ERR with a descriptor of any kind (or the
    /// "no descriptor" bit); a new kick eventfd is kept to kick with.
    private func ringDescriptor(_ input: inout InputReader) {
        let request: VhostUserMessage.Request = [.setVringKick, .setVringCall, .setVringErr][Int(input.u8()) % 3]
        let q = queue(&input)
        let noFD = input.u8() & 7 == 7
        let kind = DescriptorKind.allCases[Int(input.u8()) % DescriptorKind.allCases.count]
        var fds = descriptors(kind)
        if request == .setVringKick && kind == .eventfd, let fd = fds.first {
            owned.removeAll { $0 == fd }
            if let old = kicks[Int(q)] { close(old) }
            kicks[Int(q)] = fd
        }
        if noFD && input.u8() & 1 == 0 { fds = [] }
        send(request, VhostUserMessage.u64(UInt64(q) | (noFD ? 0x100 : 0) | (input.u8() == 0xFF ? input.u64() << 9 : 0)), fds: fds)
    }

    private func lifecycle(_ input: inout InputReader) {
        switch input.u8() % 8 {
        case 0: send(.resetDevice, [])
        case 1: send(.resetOwner, [])
        case 2: send(.getQueueNum, [])
        case 3: send(.getMaxMemSlots, [])
        case 4: send(.setBackendReqFD, [], fds: descriptors(.socket))
        case 5: send(.getConfig, input.bytes(Int(input.u8() % 48)))
        case 6: send(.setFeatures, VhostUserMessage.u64(input.u64()))
        default: send(.setProtocolFeatures, VhostUserMessage.u64(input.u64()))
        }
    }

    private func raw(_ input: inout InputReader) {
        let code = input.u8() == 0xFF ? input.u32() : UInt32(input.u8() % 48)
        let flags = input.u8() & 1 == 0 ? VhostUserMessage.version : input.u32()
        let payload = input.bytes(Int(input.u8()))
        let claimed: UInt32? = input.u8() & 7 == 7 ? UInt32(truncatingIfNeeded: input.pick([0, 4095, 4096, 4097, UInt64(UInt32.max)])) : nil
        send(code, flags: flags, payload, fds: descriptors(DescriptorKind.allCases[Int(input.u8()) % DescriptorKind.allCases.count]), claimedSize: claimed)
    }

    /// A FUSE GETATTR, or an FSYNC (which joins the pass's group and is
    /// answered when it commits), of the root posted on queue 0 or 1 as a
    /// two-descriptor chain (request, reply), with fields the input may bend,
    /// then a kick. Both are 56 bytes: the in-header and a 16-byte argument.
    private func post(_ input: inout InputReader) {
        let q = Int(input.u8() % 2)
        let size = Int(harnessQueueSize)
        let head = Int(input.u8()) % size
        let second = (head + 1) % size
        let request = memory.request(q)
        let bend = input.u8()
        let opcode: UInt32 = bend & 128 != 0 ? 20 : 3                                                // FSYNC, GETATTR
        var header = VhostUserMessage.bytes(of: UInt32(56)) + VhostUserMessage.bytes(of: opcode)       // len, opcode
        header += VhostUserMessage.u64(UInt64(input.u16()) + 1) + VhostUserMessage.u64(1)              // unique, root
        header += [UInt8](repeating: 0, count: 56 - header.count)
        for (i, b) in header.enumerated() { memory.store(b, at: request + i) }
        func descriptor(_ index: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
            let at = memory.descriptors(q) + index * 16
            memory.store(address, at: at)
            memory.store(length, at: at + 8)
            memory.store(flags, at: at + 12)
            memory.store(next, at: at + 14)
        }
        descriptor(head, address: bend & 1 != 0 ? input.u64() : UInt64(request), length: bend & 2 != 0 ? input.u32() : 56,
                   flags: bend & 4 != 0 ? input.u16() : 1, next: bend & 8 != 0 ? input.u16() : UInt16(second))
        descriptor(second, address: UInt64(request + 4096), length: bend & 16 != 0 ? input.u32() : 4096,
                   flags: bend & 32 != 0 ? input.u16() : 2, next: 0)
        let available = memory.available(q)
        let index = memory.loadU16(available + 2)
        memory.store(UInt16(head), at: available + 4 + Int(index % harnessQueueSize) * 2)
        let newIndex = bend & 64 != 0 ? input.u16() : index &+ 1
        if memory.holds(available + 2, 2) {
            cvhost_store_release_u16((memory.base + available + 2).assumingMemoryBound(to: UInt16.self), newIndex)
        }
        if let kick = kicks[q] { _ = cvhost_eventfd_signal(kick) }
    }
}

// MARK: libFuzzer entry points

@_cdecl("LLVMFuzzerTestOneInput")
public func vhostControlFuzz(_ bytes: UnsafeRawPointer, _ count: Int) -> CInt {
    guard let d = daemon, let memory = guest else { return 0 }
    var input = InputReader(bytes: UnsafeRawBufferPointer(start: bytes, count: count))
    do {
        let frontEnd = try HostileFrontEnd(socketPath: d.socketPath, memory: memory)
        frontEnd.run(&input)
        frontEnd.finish()
    } catch {
        fail("cannot connect to the back end: \(error)")
    }
    d.checkServes()
    return 0
}

@_cdecl("__lsan_default_suppressions")
public func leakSuppressions() -> UnsafePointer<CChar> {
    UnsafeRawPointer(StaticString("leak:libpmemobj.so\n").utf8Start).assumingMemoryBound(to: CChar.self)
}

@_cdecl("LLVMFuzzerInitialize")
public func vhostControlFuzzInitialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>) -> CInt {
    // A peer that closes while a reply is being sent must not kill the harness.
    signal(SIGPIPE, SIG_IGN)
    if let level = getenv("PMFS_FUZZ_LOG").flatMap({ Logger.Level(rawValue: String(cString: $0)) }) {
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
    } else {
        LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
    }
    if let dir = getenv("PMFS_FUZZ_WRITE_SEEDS").map({ String(cString: $0) }) { Seeds.write(to: dir) }
    guest = GuestMemory()
    if getenv("PMFS_FUZZ_BACKTRACES") != nil { startWatchdog() }
    do { daemon = try Daemon() } catch { fail("cannot set up the daemon: \(error)") }
    return 0
}

/// Seeds: a bring-up, then requests, then each kind of change on a running ring.
enum Seeds {
    static func write(to dir: String) {
        mkdir(dir, 0o755)
        let c = { (command: Command) in command.rawValue }
        let seeds: [[UInt8]] = [
            [c(.bringUp), 0],
            [c(.bringUp), 1, c(.post), 1, 0, 0, 0, 0, c(.pause), 3, c(.ringBase), 1, 1],
            [c(.bringUp), 0, c(.post), 1, 5, 0, 0, 0, c(.ringSize), 1, 2, c(.post), 1, 6, 1, 0, 0],
            [c(.bringUp), 0, c(.memoryTable), 1, 1, 1, 0, 0, 1, 0, 0],
            [c(.bringUp), 0, c(.post), 0, 0, 9, 0, 0, c(.ringAddresses), 1, 3, 0, 0, 0, 0],
            [c(.bringUp), 0, c(.ringDescriptor), 0, 1, 0, 2, c(.post), 1, 0, 0, 0, 0],
            [c(.bringUp), 0, c(.lifecycle), 0, c(.post), 1, 0, 0, 0, 0, c(.enable), 1, 0],
            [c(.raw), 5, 0, 8, 1, 0, 0, 0, 0, 0, 0, 0, 7, 3, 1],
            [c(.bringUp), 0, c(.post), 1, 0, 0, 0, 0, c(.shrink), 1, c(.post), 0, 3, 0, 0, 0],
        ]
        for (i, seed) in seeds.enumerated() {
            guard let f = fopen("\(dir)/seed-\(i)", "w") else { continue }
            seed.withUnsafeBytes { _ = fwrite($0.baseAddress, 1, $0.count, f) }
            fclose(f)
        }
    }
}
