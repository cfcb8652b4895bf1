import Glibc

// The vhost-user message codec (docs/interop/vhost-user.rst): a message's
// header, its body read into typed fields with every length checked before a
// byte is loaded, the fds each kind keeps, and the reply's encoding. Nothing
// here acts on the device.

extension VhostUserBackend {
    // Message types (docs/interop/vhost-user.rst).
    enum Request: UInt32 {
        case getFeatures = 1, setFeatures, setOwner, resetOwner, setMemTable, setLogBase, setLogFD
        case setVringNum, setVringAddr, setVringBase, getVringBase, setVringKick, setVringCall, setVringErr
        case getProtocolFeatures, setProtocolFeatures, getQueueNum, setVringEnable, sendRARP, netSetMTU
        case setBackendReqFD, iotlbMessage, setVringEndian, getConfig, setConfig
        case resetDevice = 34
        case getMaxMemSlots = 36
    }

    static let versionFlag: UInt32 = 0x1
    static let replyFlag: UInt32 = 0x4
    static let needReplyFlag: UInt32 = 0x8

    /// The messages whose fds are kept (or closed) by their handlers.
    static func takesFDs(_ request: Request) -> Bool {
        [.setMemTable, .setVringKick, .setVringCall, .setVringErr].contains(request)
    }
}

/// A message's fixed 12-byte header: request code, flags, body size.
struct VhostUserHeader {
    static let size = 12
    let request: UInt32
    let flags: UInt32
    let size: Int

    init?(_ bytes: [UInt8]) {
        let reader = MessageReader(bytes)
        guard let request = reader.u32(at: 0), let flags = reader.u32(at: 4), let size = reader.u32(at: 8) else { return nil }
        self.request = request
        self.flags = flags
        self.size = Int(size)
    }
}

/// Little-endian fields of a message body, read only where the body has them.
struct MessageReader {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func load<T: FixedWidthInteger & BitwiseCopyable>(_ offset: Int, _ type: T.Type) -> T? {
        guard offset >= 0, offset <= bytes.count, MemoryLayout<T>.size <= bytes.count - offset else { return nil }
        return bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
    }

    func u32(at offset: Int) -> UInt32? { load(offset, UInt32.self) }
    func u64(at offset: Int) -> UInt64? { load(offset, UInt64.self) }
}

/// One SET_MEM_TABLE region as the front end describes it.
struct MemoryRegionDescription {
    let guestPhysical: UInt64
    let size: UInt64
    let userAddress: UInt64
    let mmapOffset: UInt64
}

/// A front-end request, decoded. A body too short for its kind's fields is
/// `.malformed`; the fds a kind does not keep are closed while decoding.
enum VhostUserMessage {
    case getFeatures
    case setFeatures(UInt64)
    case getProtocolFeatures
    case setProtocolFeatures(UInt64)
    case setOwner
    /// RESET_OWNER or RESET_DEVICE.
    case reset
    case getQueueNum
    /// The regions and one fd per region (the handler closes them).
    case setMemTable([MemoryRegionDescription], fds: [Int32])
    case setVringNum(queue: UInt32, size: UInt32)
    case setVringAddr(queue: UInt32, descriptors: UInt64, used: UInt64, available: UInt64)
    case setVringBase(queue: UInt32, base: UInt32)
    case getVringBase(queue: UInt32)
    /// SET_VRING_KICK, _CALL or _ERR: the fd kept (-1 for none; the handler owns it).
    case setVringFD(VhostUserBackend.Request, queue: UInt32, fd: Int32)
    case setVringEnable(queue: UInt32, on: Bool)
    case setBackendReqFD
    case getMaxMemSlots
    /// A known request this backend does not serve.
    case unsupported(VhostUserBackend.Request)
    /// A code no request has.
    case unknown(UInt32)
    /// A known request whose body lacks its fields.
    case malformed(VhostUserBackend.Request)

    /// The most regions a memory table may have.
    static let regionLimit = 8

    /// Decodes a message; every fd received is kept by the result or closed here.
    init(code: UInt32, body: [UInt8], fds: [Int32]) {
        guard let request = VhostUserBackend.Request(rawValue: code) else {
            fds.forEach { close($0) }
            self = .unknown(code)
            return
        }
        // Every fd received is kept or closed: those of a message that takes none now.
        if !VhostUserBackend.takesFDs(request) { fds.forEach { close($0) } }
        let decoded = Self.decode(request, MessageReader(body), fds)
        if decoded == nil && VhostUserBackend.takesFDs(request) { fds.forEach { close($0) } }
        self = decoded ?? .malformed(request)
    }

    private static func decode(_ request: VhostUserBackend.Request, _ body: MessageReader, _ fds: [Int32]) -> VhostUserMessage? {
        switch request {
        case .getFeatures: return .getFeatures
        case .setFeatures: return body.u64(at: 0).map { .setFeatures($0) }
        case .getProtocolFeatures: return .getProtocolFeatures
        case .setProtocolFeatures: return body.u64(at: 0).map { .setProtocolFeatures($0) }
        case .setOwner: return .setOwner
        case .resetOwner, .resetDevice: return .reset
        case .getQueueNum: return .getQueueNum
        case .setMemTable: return memoryTable(body, fds)
        case .setVringNum:
            guard let i = body.u32(at: 0), let num = body.u32(at: 4) else { return nil }
            return .setVringNum(queue: i, size: num)
        case .setVringAddr:
            guard let i = body.u32(at: 0), let d = body.u64(at: 8), let u = body.u64(at: 16), let a = body.u64(at: 24) else { return nil }
            return .setVringAddr(queue: i, descriptors: d, used: u, available: a)
        case .setVringBase:
            guard let i = body.u32(at: 0), let base = body.u32(at: 4) else { return nil }
            return .setVringBase(queue: i, base: base)
        case .getVringBase: return body.u32(at: 0).map { .getVringBase(queue: $0) }
        case .setVringKick, .setVringCall, .setVringErr: return vringFD(request, body, fds)
        case .setVringEnable:
            guard let i = body.u32(at: 0), let on = body.u32(at: 4) else { return nil }
            return .setVringEnable(queue: i, on: on != 0)
        case .setBackendReqFD: return .setBackendReqFD
        case .getMaxMemSlots: return .getMaxMemSlots
        default: return .unsupported(request)
        }
    }

    /// SET_VRING_KICK/CALL/ERR: a u64 whose low byte is the queue and whose
    /// bit 8 says "no fd"; the first fd is kept, any other closed.
    private static func vringFD(_ request: VhostUserBackend.Request, _ body: MessageReader, _ fds: [Int32]) -> VhostUserMessage? {
        guard let v = body.u64(at: 0) else { return nil }
        let fd: Int32 = v & 0x100 != 0 ? -1 : (fds.first ?? -1)
        for other in fds where other != fd { close(other) }
        return .setVringFD(request, queue: UInt32(v & 0xff), fd: fd)
    }

    /// SET_MEM_TABLE: u32 count, u32 padding, then per region guest address,
    /// size, front-end address, mmap offset; one fd per region.
    private static func memoryTable(_ body: MessageReader, _ fds: [Int32]) -> VhostUserMessage? {
        guard let count32 = body.u32(at: 0), body.bytes.count >= 8 else { return nil }
        let count = Int(count32)
        guard count > 0, count <= regionLimit, count == fds.count, body.bytes.count >= 8 + 32 * count else { return nil }
        var regions: [MemoryRegionDescription] = []
        for i in 0..<count {
            let base = 8 + 32 * i
            guard let gpa = body.u64(at: base), let size = body.u64(at: base + 8), let user = body.u64(at: base + 16),
                  let offset = body.u64(at: base + 24) else { return nil }
            regions.append(MemoryRegionDescription(guestPhysical: gpa, size: size, userAddress: user, mmapOffset: offset))
        }
        return .setMemTable(regions, fds: fds)
    }
}

/// The reply's encoding: the request's code, the version and reply flags,
/// the payload's size, the payload.
enum VhostUserReply {
    static func frame(for request: UInt32, payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        withUnsafeBytes(of: request) { out += $0 }
        withUnsafeBytes(of: VhostUserBackend.versionFlag | VhostUserBackend.replyFlag) { out += $0 }
        withUnsafeBytes(of: UInt32(truncatingIfNeeded: payload.count)) { out += $0 }
        out += payload
        return out
    }

    static func u64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }

    /// GET_VRING_BASE's answer: the queue index and the ring's next available index.
    static func vringState(queue: UInt32, base: UInt32) -> [UInt8] {
        var state = [UInt8]()
        withUnsafeBytes(of: queue) { state += $0 }
        withUnsafeBytes(of: base) { state += $0 }
        return state
    }

    /// REPLY_ACK's payload: 0 for success.
    static func ack(_ ok: Bool) -> [UInt8] { u64(ok ? 0 : 1) }
}
