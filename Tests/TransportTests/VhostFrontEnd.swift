import CFUSE
import CVhost
import FUSETestSupport
import Glibc
import Synchronization
import VhostUserFrontEnd

/// A vhost-user front end for tests, playing QEMU and the guest at once: it
/// speaks the wire protocol (u32 request, u32 flags, u32 size, payload; fds by
/// SCM_RIGHTS) over a real Unix socket, shares guest memory from a shared
/// memory file, and lays out split rings in it. It does only what a test
/// tells it, so it can also say what no honest front end would.
final class VhostFrontEnd {
    enum Request: UInt32 {
        case getFeatures = 1, setFeatures = 2, setMemTable = 5, setVringNum = 8, setVringAddr = 9, setVringBase = 10
        case getVringBase = 11, setVringKick = 12, setVringCall = 13, getProtocolFeatures = 15, setProtocolFeatures = 16
        case setVringEnable = 18
    }

    static let versionFlag: UInt32 = 0x1
    static let needReplyFlag: UInt32 = 0x8
    static let protocolFeatures: UInt64 = 1 << 30
    static let replyAck: UInt64 = 1 << 3

    let socket: Int32

    init(socket: Int32) { self.socket = socket }

    deinit { close(socket) }

    /// Connects to a backend listening on `path` (retrying while it starts up).
    static func connect(to path: String) -> VhostFrontEnd? {
        for _ in 0..<200 {
            let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if rc == 0 { return VhostFrontEnd(socket: fd) }
            close(fd)
            usleep(10_000)
        }
        return nil
    }

    // MARK: wire format

    /// Sends one message; the fds go along as SCM_RIGHTS (they stay ours too).
    func send(_ request: UInt32, flags: UInt32 = versionFlag, payload: [UInt8] = [], fds: [Int32] = []) {
        var bytes: [UInt8] = []
        withUnsafeBytes(of: request) { bytes += $0 }
        withUnsafeBytes(of: flags) { bytes += $0 }
        withUnsafeBytes(of: UInt32(payload.count)) { bytes += $0 }
        bytes += payload
        // cmsghdr on Linux: size_t length, int level, int type, then the fds (8-byte aligned).
        let header = MemoryLayout<Int>.size + 8
        var control = [UInt8](repeating: 0, count: fds.isEmpty ? 0 : header + (fds.count * 4 + 7) / 8 * 8)
        if !fds.isEmpty {
            control.withUnsafeMutableBytes { c in
                c.storeBytes(of: header + 4 * fds.count, as: Int.self)
                c.storeBytes(of: Int32(SOL_SOCKET), toByteOffset: MemoryLayout<Int>.size, as: Int32.self)
                c.storeBytes(of: Int32(SCM_RIGHTS), toByteOffset: MemoryLayout<Int>.size + 4, as: Int32.self)
                for (i, fd) in fds.enumerated() { c.storeBytes(of: fd, toByteOffset: header + 4 * i, as: Int32.self) }
            }
        }
        bytes.withUnsafeMutableBytes { b in
            control.withUnsafeMutableBytes { c in
                var iov = iovec(iov_base: b.baseAddress, iov_len: b.count)
                withUnsafeMutablePointer(to: &iov) { iovp in
                    var m = msghdr()
                    m.msg_iov = iovp
                    m.msg_iovlen = 1
                    m.msg_control = fds.isEmpty ? nil : c.baseAddress
                    m.msg_controllen = fds.isEmpty ? 0 : c.count
                    _ = sendmsg(socket, &m, Int32(MSG_NOSIGNAL))
                }
            }
        }
    }

    /// The next reply's payload, or nil if none comes within `timeout` seconds.
    func receive(timeout: Double = 2) -> [UInt8]? {
        guard let header = receiveExactly(12, timeout: timeout) else { return nil }
        let size = Int(header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self) })
        return size == 0 ? [] : receiveExactly(size, timeout: timeout)
    }

    private func receiveExactly(_ count: Int, timeout: Double) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            var p = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, Int32(timeout * 1000)) == 1 else { return nil }
            let n = out.withUnsafeMutableBytes { recv(socket, $0.baseAddress! + done, count - done, 0) }
            guard n > 0 else { return nil }
            done += n
        }
        return out
    }

    /// Sends with NEED_REPLY (REPLY_ACK negotiated) and returns whether the backend said yes.
    @discardableResult
    func ask(_ request: Request, _ payload: [UInt8] = [], fds: [Int32] = []) -> Bool {
        send(request.rawValue, flags: Self.versionFlag | Self.needReplyFlag, payload: payload, fds: fds)
        guard let reply = receive(), reply.count == 8 else { return false }
        return reply.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } == 0
    }

    /// A message whose reply is owed anyway (GET_*): its payload.
    func get(_ request: Request, _ payload: [UInt8] = []) -> [UInt8]? {
        send(request.rawValue, payload: payload)
        return receive()
    }

    /// Features with protocol features and REPLY_ACK, so every message can be acknowledged.
    func negotiate() -> Bool {
        guard get(.getFeatures) != nil, get(.getProtocolFeatures) != nil else { return false }
        send(Request.setProtocolFeatures.rawValue, payload: bytes(Self.replyAck))
        return ask(.setFeatures, bytes(Self.protocolFeatures | 1 << 32))
    }

    func setMemoryTable(_ regions: [(memory: GuestRAM, guestPhysical: UInt64, size: UInt64, offset: UInt64)]) -> Bool {
        var payload = bytes(UInt32(regions.count), UInt32(0))
        for r in regions { payload += bytes(r.guestPhysical, r.size, r.memory.userAddress + r.offset, r.offset) }
        return ask(.setMemTable, payload, fds: regions.map(\.memory.fd))
    }

    /// NUM, BASE, ADDR, KICK, CALL, ENABLE: the ring is live afterwards.
    func start(_ ring: SplitRing, queue: UInt32) -> Bool {
        ask(.setVringNum, bytes(queue, UInt32(ring.size)))
            && ask(.setVringBase, bytes(queue, UInt32(0)))
            && setAddress(ring, queue: queue)
            && ask(.setVringKick, bytes(UInt64(queue)), fds: [ring.kick])
            && ask(.setVringCall, bytes(UInt64(queue)), fds: [ring.call])
            && ask(.setVringEnable, bytes(queue, UInt32(1)))
    }

    func setAddress(_ ring: SplitRing, queue: UInt32) -> Bool {
        let base = ring.memory.userAddress
        return ask(.setVringAddr, bytes(queue, UInt32(0)) + bytes(base + ring.descriptorOffset, base + ring.usedOffset,
                                                                 base + ring.availableOffset, UInt64(0)))
    }

    /// GET_VRING_BASE: the ring stops; nil if the answer does not come in time.
    func stopRing(_ queue: UInt32, timeout: Double = 1) -> UInt32? {
        send(Request.getVringBase.rawValue, payload: bytes(queue, UInt32(0)))
        guard let reply = receive(timeout: timeout), reply.count == 8 else { return nil }
        return reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) }
    }
}

/// Little-endian bytes of fixed-width integers, in order.
func bytes(_ values: any FixedWidthInteger...) -> [UInt8] {
    var out: [UInt8] = []
    for v in values { withUnsafeBytes(of: v) { out += $0 } }
    return out
}

/// Guest memory: a shared memory file (unlinked at once, as a memfd would be)
/// mapped here as the guest's RAM from guest-physical 0; the front end's view
/// of it is at `userAddress`. Or a real memfd, as QEMU's memory-backend-memfd
/// makes, sealed against shrinking or not.
final class GuestRAM {
    let fd: Int32
    let size: Int
    let base: UnsafeMutableRawPointer
    let userAddress: UInt64 = 0x7f00_0000_0000

    init?(size: Int) {
        let path = "/dev/shm/pmfs-vhost-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
        unlink(path)
        guard ftruncate(fd, off_t(size)) == 0, let p = Self.mapShared(fd, size) else { close(fd); return nil }
        (self.fd, self.size, base) = (fd, size, p)
    }

    init?(memfdSize size: Int, sealedAgainstShrinking: Bool) {
        let fd = cvhost_memfd_sealable("pmfs-vhost-test", UInt64(size), sealedAgainstShrinking ? 1 : 0)
        guard fd >= 0 else { return nil }
        guard let p = Self.mapShared(fd, size) else { close(fd); return nil }
        (self.fd, self.size, base) = (fd, size, p)
    }

    /// `hugePages` pages of 2 MiB from the huge page pool (see `HugePages`).
    init?(hugePages: Int) {
        let size = hugePages * HugePages.size
        let fd = cvhost_memfd_huge("pmfs-vhost-test-huge", UInt64(size))
        guard fd >= 0 else { return nil }
        guard let p = Self.mapShared(fd, size) else { close(fd); return nil }
        (self.fd, self.size, base) = (fd, size, p)
    }

    private static func mapShared(_ fd: Int32, _ size: Int) -> UnsafeMutableRawPointer? {
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else { return nil }
        return p
    }

    deinit { munmap(base, size); close(fd) }
}

/// A split ring laid out in guest memory (descriptor table, avail ring, used
/// ring, a page apart) with a data area after it, and its kick and call eventfds.
final class SplitRing: @unchecked Sendable {
    let memory: GuestRAM
    let size: UInt16
    let descriptorOffset: UInt64
    var availableOffset: UInt64 { descriptorOffset + 0x1_0000 }
    var usedOffset: UInt64 { descriptorOffset + 0x2_0000 }
    var dataOffset: UInt64 { descriptorOffset + 0x3_0000 }
    let kick = cvhost_eventfd()
    let call = cvhost_eventfd()
    private var nextAvailable: UInt16 = 0

    /// 0x30000 bytes of rings plus 64 KiB of data from `offset` (a ring of up to 4096 entries fits).
    init(in memory: GuestRAM, at offset: UInt64, size: UInt16 = 8) {
        self.memory = memory
        self.size = size
        descriptorOffset = offset
    }

    deinit { close(kick); close(call) }

    /// Takes over another ring's indices, as a ring moved elsewhere in guest memory would.
    func carryOn(from other: SplitRing) {
        nextAvailable = other.nextAvailable
        availableIndex = other.availableIndex
        at(usedOffset + UInt64(SplitRingLayout.indexOffset)).storeBytes(of: other.usedIndex, as: UInt16.self)
    }

    private func at(_ offset: UInt64) -> UnsafeMutableRawPointer { memory.base + Int(offset) }

    func descriptor(_ i: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        SplitRingLayout.storeDescriptor(at(descriptorOffset), i, address: address, length: length, flags: flags, next: next)
    }

    var availableIndex: UInt16 {
        get { at(availableOffset + UInt64(SplitRingLayout.indexOffset)).load(as: UInt16.self) }
        set { at(availableOffset + UInt64(SplitRingLayout.indexOffset)).storeBytes(of: newValue, as: UInt16.self) }
    }

    var usedIndex: UInt16 { at(usedOffset + UInt64(SplitRingLayout.indexOffset)).load(as: UInt16.self) }

    /// Puts `head` in the next avail slot and publishes it (no kick).
    func offer(_ head: UInt16) {
        at(availableOffset + UInt64(SplitRingLayout.availableEntryOffset(nextAvailable, size: size))).storeBytes(of: head, as: UInt16.self)
        nextAvailable &+= 1
        atomicFence()
        availableIndex = nextAvailable
    }

    /// Writes one FUSE request as chain 0 (request, then a writable reply
    /// buffer), without offering it.
    func place(_ message: [UInt8]) {
        message.withUnsafeBytes { at(requestAt).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        memset(at(replyAt), 0xff, 16)
        descriptor(0, address: requestAt, length: UInt32(message.count), flags: SplitRingLayout.next, next: 1)
        descriptor(1, address: replyAt, length: 0x8000, flags: SplitRingLayout.write, next: 0)
    }

    /// Writes `message` as chain 0 through an indirect table at `tableAt`
    /// (guest-physical) that first has `padding` empty descriptors: a valid
    /// chain that takes the backend long to walk.
    func placeSlowly(_ message: [UInt8], tableAt: UInt64, padding: Int) {
        place(message)
        let table = memory.base + Int(tableAt)
        func entry(_ i: Int, _ address: UInt64, _ length: UInt32, _ flags: UInt16) {
            SplitRingLayout.storeDescriptor(table, i, address: address, length: length, flags: flags, next: UInt16(i + 1))
        }
        for i in 0..<padding { entry(i, requestAt, 0, SplitRingLayout.next) }
        entry(padding, requestAt, UInt32(message.count), SplitRingLayout.next)
        entry(padding + 1, replyAt, 0x8000, SplitRingLayout.write)
        descriptor(0, address: tableAt, length: UInt32(SplitRingLayout.descriptorSize * (padding + 2)), flags: SplitRingLayout.indirect, next: 0)
    }

    private var requestAt: UInt64 { dataOffset }
    private var replyAt: UInt64 { dataOffset + 0x8000 }

    /// Sends one FUSE request, kicks (`kick`, or this ring's own eventfd),
    /// and returns the reply's out-header error, or nil if the chain does not
    /// come back within `timeout` seconds.
    func request(_ message: [UInt8], kick: Int32? = nil, timeout: Double = 2) -> Int32? {
        place(message)
        let used = usedIndex
        offer(0)
        var one: UInt64 = 1
        _ = write(kick ?? self.kick, &one, 8)
        var waited = 0.0
        while usedIndex == used {
            guard waited < timeout else { return nil }
            usleep(1000); waited += 0.001
        }
        atomicFence()
        return at(replyAt + 4).load(as: Int32.self)
    }
}

private func atomicFence() { atomicMemoryFence(ordering: .sequentiallyConsistent) }

/// FUSE_INIT and GETATTR of the root, as a guest's driver sends them first.
enum GuestRequests {
    static func initialize(unique: UInt64 = 1) -> [UInt8] {
        fuseMessage(FUSE_INIT, unique: unique, body: fuseInitArgument())
    }

    static func getattrRoot(unique: UInt64 = 2) -> [UInt8] {
        fuseMessage(FUSE_GETATTR.rawValue, unique: unique, body: [UInt8](repeating: 0, count: 16))
    }
}

/// Huge pages set aside for a test (root: /proc/sys/vm/nr_hugepages), given back after.
struct HugePages {
    static let size = 2 << 20
    static let control = "/proc/sys/vm/nr_hugepages"
    static var adjustable: Bool { access(control, W_OK) == 0 }
    let before: Int

    /// Raises the pool by `count` free pages, or nil if the kernel cannot.
    init?(reserving count: Int) {
        guard let now = Self.read(Self.control) else { return nil }
        before = now
        guard Self.write(now + count), let free = Self.freePages(), free >= count else { Self.write(now); return nil }
    }

    func release() { Self.write(before) }

    private static func read(_ path: String) -> Int? {
        lines(path).first.flatMap { Int(String($0.filter(\.isNumber))) }
    }

    private static func lines(_ path: String) -> [String] {
        guard let f = fopen(path, "r") else { return [] }
        defer { fclose(f) }
        var out: [String] = []
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), f) != nil { out.append(String(cString: line)) }
        return out
    }

    @discardableResult private static func write(_ pages: Int) -> Bool {
        guard let f = fopen(control, "w") else { return false }
        let ok = fputs("\(pages)\n", f) >= 0
        return fclose(f) == 0 && ok
    }

    private static func freePages() -> Int? {
        lines("/proc/meminfo").first { $0.hasPrefix("HugePages_Free:") }.flatMap { Int(String($0.dropFirst(15).filter(\.isNumber))) }
    }
}
