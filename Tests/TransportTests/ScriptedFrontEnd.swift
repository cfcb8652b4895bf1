import CFUSE
import CVhost
import FUSETestSupport
import Glibc
import Synchronization
import VhostUserFrontEnd

/// A vhost-user front end that does only what a test tells it, playing QEMU
/// and the guest at once. It shares the wire codec and the socket calls of
/// `VhostUserFrontEnd` (Testing/VhostUserFrontEnd), which sets a whole device
/// up as QEMU does; this one stays separate because the hostile tests need
/// what that one must not do: messages in any order or left out, memory
/// tables of several regions or of regions larger than their file, rings
/// moved or resized while live, and replies read whatever they are.
final class ScriptedFrontEnd {
    typealias Request = VhostUserMessage.Request

    static let versionFlag = VhostUserMessage.version
    static let needReplyFlag = VhostUserMessage.needReply
    static let featureProtocol = VhostUserFrontEnd.featureProtocol

    let socket: Int32

    init(socket: Int32) { self.socket = socket }

    deinit { close(socket) }

    /// Connects to a backend listening on `path` (waiting up to two seconds for it to start).
    static func connect(to path: String) -> ScriptedFrontEnd? {
        (try? VhostUserFrontEnd.connect(path, timeout: 2)).map(ScriptedFrontEnd.init(socket:))
    }

    // MARK: wire format

    /// Sends one message; the fds go along as SCM_RIGHTS (they stay ours too).
    func send(_ request: UInt32, flags: UInt32 = versionFlag, payload: [UInt8] = [], fds: [Int32] = []) {
        let message = VhostUserMessage.header(request, flags: flags, size: UInt32(payload.count)) + payload
        _ = message.withUnsafeBytes { b in
            fds.withUnsafeBufferPointer { cvhost_send_with_fds(socket, b.baseAddress, b.count, $0.baseAddress, Int32($0.count)) }
        }
    }

    /// The next reply's payload, whatever message it answers, or nil if none
    /// comes within `timeout` seconds.
    func receive(timeout: Double = 2) -> [UInt8]? {
        guard let header = receiveExactly(12, timeout: timeout) else { return nil }
        let size = Int(header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self) })
        return size == 0 ? [] : receiveExactly(size, timeout: timeout)
    }

    private func receiveExactly(_ count: Int, timeout: Double) -> [UInt8]? {
        guard cvhost_wait2(socket, -1, Int32(timeout * 1000)) > 0 else { return nil }
        var out = [UInt8](repeating: 0, count: count)
        let n = out.withUnsafeMutableBytes { cvhost_recv_exact(socket, $0.baseAddress, count) }
        return n == count ? out : nil
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
        send(Request.setProtocolFeatures.rawValue, payload: bytes(VhostUserFrontEnd.protocolReplyAck))
        return ask(.setFeatures, bytes(Self.featureProtocol | VhostUserFrontEnd.featureVersion1))
    }

    func setMemoryTable(_ regions: [(memory: GuestRAM, guestPhysical: UInt64, size: UInt64, offset: UInt64)]) -> Bool {
        var payload = bytes(UInt32(regions.count), UInt32(0))
        for r in regions { payload += bytes(r.guestPhysical, r.size, r.memory.userAddress + r.offset, r.offset) }
        return ask(.setMemTable, payload, fds: regions.map(\.memory.fd))
    }

    /// NUM, BASE, ADDR, KICK, CALL, ENABLE: the ring is live afterwards.
    func start(_ ring: HandLaidRing, queue: UInt32) -> Bool {
        ask(.setVringNum, bytes(queue, UInt32(ring.size)))
            && ask(.setVringBase, bytes(queue, UInt32(0)))
            && setAddress(ring, queue: queue)
            && ask(.setVringKick, bytes(UInt64(queue)), fds: [ring.kick])
            && ask(.setVringCall, bytes(UInt64(queue)), fds: [ring.call])
            && ask(.setVringEnable, bytes(queue, UInt32(1)))
    }

    func setAddress(_ ring: HandLaidRing, queue: UInt32) -> Bool {
        let base = ring.memory.userAddress
        return ask(.setVringAddr, VhostUserMessage.ringAddresses(queue, descriptors: base + ring.descriptorOffset,
                                                                 used: base + ring.usedOffset, available: base + ring.availableOffset))
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

/// A split ring laid out by hand in guest memory (descriptor table, avail
/// ring, used ring, 64 KiB apart) with a data area after it, and its kick and
/// call eventfds. Unlike `VhostUserFrontEnd`'s `SplitRing`, which hands out
/// slots, a test writes its chains here descriptor by descriptor.
final class HandLaidRing: @unchecked Sendable {
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
    func carryOn(from other: HandLaidRing) {
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
