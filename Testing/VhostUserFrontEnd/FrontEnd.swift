import CVhost
import Glibc
import PMFSConcurrency

/// A vhost-user front end that sets a device up as QEMU's vhost-user-fs-pci
/// does: a Unix socket, guest memory in a memfd shared with SET_MEM_TABLE,
/// split rings in that memory, a kick and a call eventfd per queue. It plays
/// the guest too: requests go into its own buffers, are made available on a
/// ring, and replies are read back from the used ring. For the daemon-side
/// benchmark (pmfsd against virtiofsd, no guest kernel, no emulation) and for
/// tests that drive a back end with valid or hostile input.
public final class VhostUserFrontEnd {
    public struct Options {
        public var requestQueues = 1
        public var queueSize: UInt16 = 256
        /// Requests that may be in flight at once on each queue.
        public var slotsPerQueue = 16
        /// Room for one request and for one reply, per slot.
        public var slotBytes = 1 << 20 + 4096
        /// Feature bits to take beyond VERSION_1 and PROTOCOL_FEATURES, where offered.
        public var extraFeatures: UInt64 = 0
        public init() {}
    }

    public enum Failure: Error, CustomStringConvertible {
        case system(String, Int32)
        case refused(String)
        case timeout(String)
        public var description: String {
            switch self {
            case .system(let what, let e): return "\(what): \(String(cString: strerror(e)))"
            case .refused(let what): return what
            case .timeout(let what): return "timed out: \(what)"
            }
        }
    }

    public static let featureVersion1: UInt64 = 1 << 32
    public static let featureProtocol: UInt64 = 1 << 30
    public static let protocolMQ: UInt64 = 1 << 0
    public static let protocolReplyAck: UInt64 = 1 << 3

    public let options: Options
    public let socket: Int32
    let memoryFD: Int32
    public let memory: UnsafeMutableRawPointer
    public let memoryBytes: Int
    var rings: [SplitRing] = []
    public private(set) var protocolFeatures: UInt64 = 0
    public private(set) var features: UInt64 = 0

    /// Connects to `socketPath` (waiting up to `connectTimeout` seconds for it
    /// to appear) and sets every queue up; the device is then ready for requests.
    public init(socketPath: String, options: Options = Options(), connectTimeout: Double = 10) throws {
        self.options = options
        socket = try Self.connect(socketPath, timeout: connectTimeout)
        let layout = GuestLayout(options)
        memoryBytes = layout.total
        let fd = cvhost_memfd("pmfs-front-end", UInt64(memoryBytes))
        guard fd >= 0 else { close(socket); throw Failure.system("memfd", -fd) }
        memoryFD = fd
        guard let p = mmap(nil, memoryBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            close(fd); close(socket); throw Failure.system("mmap", errno)
        }
        memory = p
        for q in 0...options.requestQueues {
            rings.append(try SplitRing(memory: memory, layout: layout, queue: q, size: options.queueSize,
                                       slots: options.slotsPerQueue, slotBytes: options.slotBytes))
        }
        try negotiate()
        try attachRings()
    }

    deinit {
        close(socket)
        for r in rings { r.closeDescriptors() }
        munmap(memory, memoryBytes)
        close(memoryFD)
    }

    /// Where the queues and their buffers lie in guest memory.
    struct GuestLayout {
        static let ringBytes = 64 << 10
        let rings: Int
        let perQueueBuffers: Int
        let total: Int
        init(_ o: Options) {
            rings = (o.requestQueues + 1) * Self.ringBytes
            perQueueBuffers = o.slotsPerQueue * 2 * o.slotBytes
            total = rings + (o.requestQueues + 1) * perQueueBuffers
        }
    }

    /// A connected Unix stream socket to `path`, waiting up to `timeout`
    /// seconds for a listener to appear there.
    public static func connect(_ path: String, timeout: Double) throws -> Int32 {
        let deadline = Deadline.after(.seconds(timeout))
        while true {
            let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw Failure.system("socket", errno) }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { close(fd); throw Failure.refused("socket path too long") }
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if rc == 0 { return fd }
            let e = errno
            close(fd)
            guard e == ENOENT || e == ECONNREFUSED, !deadline.hasPassed else {
                throw Failure.system("connect \(path)", e)
            }
            usleep(20_000)
        }
    }

    // MARK: control messages

    /// Sends one message; with `needReply` (and REPLY_ACK negotiated) waits for the ack.
    public func send(_ request: VhostUserMessage.Request, _ payload: [UInt8] = [], fds: [Int32] = [], needReply: Bool = false) throws {
        let ask = needReply && protocolFeatures & Self.protocolReplyAck != 0
        try sendRaw(request.rawValue, flags: VhostUserMessage.version | (ask ? VhostUserMessage.needReply : 0), payload, fds: fds)
        if ask {
            let ack = try receiveReply(request.rawValue)
            guard ack.count == 8, ack.withUnsafeBytes({ $0.loadUnaligned(as: UInt64.self) }) == 0 else {
                throw Failure.refused("the back end refused \(request)")
            }
        }
    }

    /// Sends one message and reads the reply it is owed (GET_*).
    public func ask(_ request: VhostUserMessage.Request, _ payload: [UInt8] = []) throws -> [UInt8] {
        try sendRaw(request.rawValue, flags: VhostUserMessage.version, payload, fds: [])
        return try receiveReply(request.rawValue)
    }

    /// Any bytes as a message: for hostile tests.
    public func sendRaw(_ code: UInt32, flags: UInt32, _ payload: [UInt8], fds: [Int32], claimedSize: UInt32? = nil) throws {
        var message = VhostUserMessage.header(code, flags: flags, size: claimedSize ?? UInt32(payload.count))
        message += payload
        let n = message.withUnsafeBytes { b in fds.withUnsafeBufferPointer { cvhost_send_with_fds(socket, b.baseAddress, b.count, $0.baseAddress, Int32($0.count)) } }
        guard n == message.count else { throw Failure.system("send", n < 0 ? Int32(-n) : EPIPE) }
    }

    public func receiveReply(_ code: UInt32, timeoutMilliseconds: Int32 = 10_000) throws -> [UInt8] {
        guard cvhost_wait2(socket, -1, timeoutMilliseconds) > 0 else { throw Failure.timeout("reply to message \(code)") }
        var header = [UInt8](repeating: 0, count: 12)
        guard header.withUnsafeMutableBytes({ cvhost_recv_exact(socket, $0.baseAddress, 12) }) == 12 else {
            throw Failure.refused("the back end closed the connection")
        }
        let (request, size) = header.withUnsafeBytes { ($0.loadUnaligned(as: UInt32.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self)) }
        guard request == code, size <= 4096 else { throw Failure.refused("reply to \(request) (\(size) bytes) where \(code) was asked") }
        var payload = [UInt8](repeating: 0, count: Int(size))
        if size > 0 {
            guard payload.withUnsafeMutableBytes({ cvhost_recv_exact(socket, $0.baseAddress, Int(size)) }) == Int(size) else {
                throw Failure.refused("short reply")
            }
        }
        return payload
    }

    private func askU64(_ request: VhostUserMessage.Request) throws -> UInt64 {
        let r = try ask(request)
        guard r.count == 8 else { throw Failure.refused("\(request): \(r.count)-byte reply") }
        return r.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }

    private func negotiate() throws {
        let offered = try askU64(.getFeatures)
        features = offered & (Self.featureVersion1 | Self.featureProtocol | options.extraFeatures)
        guard features & Self.featureProtocol != 0 else { throw Failure.refused("the back end offers no protocol features") }
        try send(.setFeatures, VhostUserMessage.u64(features))
        let offeredProtocol = try askU64(.getProtocolFeatures)
        protocolFeatures = offeredProtocol & (Self.protocolMQ | Self.protocolReplyAck)
        try send(.setProtocolFeatures, VhostUserMessage.u64(protocolFeatures))
        try send(.setOwner, needReply: true)
        try send(.setMemTable, VhostUserMessage.memoryTable(guestPhysical: 0, size: UInt64(memoryBytes),
                                                            userAddress: UInt64(UInt(bitPattern: memory)), mmapOffset: 0),
                 fds: [memoryFD], needReply: true)
    }

    private func attachRings() throws {
        for ring in rings {
            let q = UInt32(ring.queue)
            try send(.setVringNum, VhostUserMessage.u32Pair(q, UInt32(ring.size)), needReply: true)
            try send(.setVringAddr, VhostUserMessage.ringAddresses(q, descriptors: ring.userAddress(ring.descriptors),
                                                                   used: ring.userAddress(ring.used),
                                                                   available: ring.userAddress(ring.available)), needReply: true)
            try send(.setVringBase, VhostUserMessage.u32Pair(q, 0), needReply: true)
            try send(.setVringCall, VhostUserMessage.u64(UInt64(q)), fds: [ring.callFD], needReply: true)
            try send(.setVringKick, VhostUserMessage.u64(UInt64(q)), fds: [ring.kickFD], needReply: true)
            try send(.setVringEnable, VhostUserMessage.u32Pair(q, 1), needReply: true)
        }
    }

    // MARK: hostile acts

    /// Shrinks the memory file behind the guest's RAM to `bytes`, as a hostile
    /// front end may after SET_MEM_TABLE. Guest memory past `bytes` is gone
    /// from then on, here too (touching it would raise SIGBUS in this
    /// process): only kick, wait for the hang-up, and go.
    public func shrinkMemory(to bytes: Int) throws {
        guard ftruncate(memoryFD, off_t(bytes)) == 0 else { throw Failure.system("ftruncate", errno) }
    }

    /// Whether the back end closes the connection within `timeoutMilliseconds`.
    public func waitForHangUp(timeoutMilliseconds: Int32) -> Bool {
        guard cvhost_wait2(socket, -1, timeoutMilliseconds) > 0 else { return false }
        var byte: UInt8 = 0
        return recv(socket, &byte, 1, Int32(MSG_DONTWAIT)) == 0
    }

    // MARK: requests

    public func ring(_ queue: Int) -> SplitRing { rings[queue] }

    /// One request on `queue`, waited for: its reply's bytes.
    public func roundTrip(queue: Int, _ request: [UInt8], replyCapacity: Int = 4096, timeoutMilliseconds: Int32 = 10_000) throws -> [UInt8] {
        let ring = rings[queue]
        guard let slot = ring.submit(request, replyCapacity: replyCapacity) else { throw Failure.refused("no free slot on queue \(queue)") }
        while true {
            if let reply = ring.reap(slot) { return reply }
            try ring.waitForCall(timeoutMilliseconds: timeoutMilliseconds)
        }
    }
}
