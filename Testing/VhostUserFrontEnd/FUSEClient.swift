import CFUSE
import Glibc

/// FUSE requests as a guest's virtiofs driver sends them, over one queue of a
/// `VhostUserFrontEnd`: builds each message, waits for its reply and checks
/// the out-header. Enough of the protocol for benchmarks and tests.
public final class FUSEClient {
    public struct Failure: Error, CustomStringConvertible {
        public let opcode: UInt32
        public let errno: Int32
        public init(opcode: UInt32, errno: Int32) { self.opcode = opcode; self.errno = errno }
        public var description: String { "FUSE opcode \(opcode): \(errno == 0 ? "bad reply" : String(cString: strerror(errno)))" }
    }

    public let frontEnd: VhostUserFrontEnd
    public let queue: Int
    private var unique: UInt64 = 0

    public init(_ frontEnd: VhostUserFrontEnd, queue: Int = 1) {
        self.frontEnd = frontEnd
        self.queue = queue
    }

    /// A whole request: the in-header, then the argument bytes.
    public func message(_ opcode: fuse_opcode, nodeid: UInt64, _ arguments: [UInt8]) -> [UInt8] {
        unique &+= 2
        var h = fuse_in_header()
        h.len = UInt32(MemoryLayout<fuse_in_header>.size + arguments.count)
        h.opcode = opcode.rawValue
        h.unique = unique
        h.nodeid = nodeid
        h.uid = 0; h.gid = 0; h.pid = UInt32(getpid())
        return VhostUserMessage.bytes(of: h) + arguments
    }

    /// Sends a request and returns the reply's payload (after the out-header); throws the error a reply carries.
    @discardableResult
    public func call(_ opcode: fuse_opcode, nodeid: UInt64, _ arguments: [UInt8], replyCapacity: Int = 4096) throws -> [UInt8] {
        let reply = try frontEnd.roundTrip(queue: queue, message(opcode, nodeid: nodeid, arguments), replyCapacity: replyCapacity)
        let header = MemoryLayout<fuse_out_header>.size
        guard reply.count >= header else { throw Failure(opcode: opcode.rawValue, errno: 0) }
        let out = reply.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }
        guard out.error == 0 else { throw Failure(opcode: opcode.rawValue, errno: -out.error) }
        return Array(reply[header...])
    }

    public static func bytes<T>(_ value: T) -> [UInt8] { VhostUserMessage.bytes(of: value) }
    public static func name(_ s: String) -> [UInt8] { Array(s.utf8) + [0] }

    private func load<T>(_ type: T.Type, _ payload: [UInt8], _ opcode: fuse_opcode) throws -> T {
        guard payload.count >= MemoryLayout<T>.size else { throw Failure(opcode: opcode.rawValue, errno: 0) }
        return payload.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
    }

    // MARK: operations

    public func initialize(flags: UInt64 = 0, maxReadahead: UInt32 = 1 << 20) throws -> fuse_init_out {
        var i = fuse_init_in()
        i.major = 7; i.minor = 38; i.max_readahead = maxReadahead
        i.flags = UInt32(truncatingIfNeeded: flags) | UInt32(FUSE_INIT_EXT)
        i.flags2 = UInt32(truncatingIfNeeded: flags >> 32)
        return try load(fuse_init_out.self, call(FUSE_INIT, nodeid: 0, Self.bytes(i)), FUSE_INIT)
    }

    public func lookup(parent: UInt64, _ name: String) throws -> fuse_entry_out {
        try load(fuse_entry_out.self, call(FUSE_LOOKUP, nodeid: parent, Self.name(name)), FUSE_LOOKUP)
    }

    public func getattr(_ nodeid: UInt64) throws -> fuse_attr_out {
        try load(fuse_attr_out.self, call(FUSE_GETATTR, nodeid: nodeid, Self.bytes(fuse_getattr_in())), FUSE_GETATTR)
    }

    public func create(parent: UInt64, _ name: String, mode: UInt32 = 0o100644, flags: UInt32 = UInt32(O_RDWR)) throws -> (entry: fuse_entry_out, handle: UInt64) {
        var c = fuse_create_in()
        c.flags = flags; c.mode = mode; c.umask = 0o022
        let reply = try call(FUSE_CREATE, nodeid: parent, Self.bytes(c) + Self.name(name))
        let entry = try load(fuse_entry_out.self, reply, FUSE_CREATE)
        let open = try load(fuse_open_out.self, Array(reply.dropFirst(MemoryLayout<fuse_entry_out>.size)), FUSE_CREATE)
        return (entry, open.fh)
    }

    public func open(_ nodeid: UInt64, flags: UInt32 = UInt32(O_RDWR)) throws -> UInt64 {
        var o = fuse_open_in()
        o.flags = flags
        return try load(fuse_open_out.self, call(FUSE_OPEN, nodeid: nodeid, Self.bytes(o)), FUSE_OPEN).fh
    }

    @discardableResult
    public func write(_ nodeid: UInt64, handle: UInt64, offset: UInt64, _ data: [UInt8]) throws -> UInt32 {
        var w = fuse_write_in()
        w.fh = handle; w.offset = offset; w.size = UInt32(data.count)
        return try load(fuse_write_out.self, call(FUSE_WRITE, nodeid: nodeid, Self.bytes(w) + data), FUSE_WRITE).size
    }

    public func read(_ nodeid: UInt64, handle: UInt64, offset: UInt64, size: UInt32) throws -> [UInt8] {
        var r = fuse_read_in()
        r.fh = handle; r.offset = offset; r.size = size
        return try call(FUSE_READ, nodeid: nodeid, Self.bytes(r), replyCapacity: Int(size) + 16)
    }

    public func fsync(_ nodeid: UInt64, handle: UInt64, dataOnly: Bool = false) throws {
        var f = fuse_fsync_in()
        f.fh = handle; f.fsync_flags = dataOnly ? 1 : 0
        try call(FUSE_FSYNC, nodeid: nodeid, Self.bytes(f))
    }

    public func release(_ nodeid: UInt64, handle: UInt64) throws {
        var r = fuse_release_in()
        r.fh = handle
        try call(FUSE_RELEASE, nodeid: nodeid, Self.bytes(r))
    }

    public func unlink(parent: UInt64, _ name: String) throws {
        try call(FUSE_UNLINK, nodeid: parent, Self.name(name))
    }

    public func mkdir(parent: UInt64, _ name: String, mode: UInt32 = 0o755) throws -> fuse_entry_out {
        var m = fuse_mkdir_in()
        m.mode = mode; m.umask = 0o022
        return try load(fuse_entry_out.self, call(FUSE_MKDIR, nodeid: parent, Self.bytes(m) + Self.name(name)), FUSE_MKDIR)
    }

    /// FORGET gets no reply; the chain still comes back (empty).
    public func forget(_ nodeid: UInt64, count: UInt64) throws {
        var f = fuse_forget_in()
        f.nlookup = count
        _ = try frontEnd.roundTrip(queue: queue, message(FUSE_FORGET, nodeid: nodeid, Self.bytes(f)))
    }
}
