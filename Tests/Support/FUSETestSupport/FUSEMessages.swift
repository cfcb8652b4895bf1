import CFUSE
import FUSEProtocol

/// A FUSE request as the kernel sends it: the in-header (length, opcode,
/// unique, node ID; caller ids 0), then `body`.
public func fuseMessage(_ opcode: UInt32, unique: UInt64, nodeid: UInt64 = 1, body: [UInt8] = []) -> [UInt8] {
    var h = fuse_in_header()
    h.len = UInt32(MemoryLayout<fuse_in_header>.size + body.count)
    h.opcode = opcode
    h.unique = unique
    h.nodeid = nodeid
    return bytes(of: h) + body
}

public func fuseMessage(_ opcode: fuse_opcode, unique: UInt64, nodeid: UInt64 = 1, body: [UInt8] = []) -> [UInt8] {
    fuseMessage(opcode.rawValue, unique: unique, nodeid: nodeid, body: body)
}

/// The bytes of a value as it lies in memory (a kernel ABI struct).
public func bytes<T>(of value: T) -> [UInt8] {
    withUnsafeBytes(of: value) { Array($0) }
}

/// FUSE_INIT's argument: protocol 7.38, offering `flags` and `flags2`.
public func fuseInitArgument(flags: UInt32 = 0, flags2: UInt32 = 0) -> [UInt8] {
    var i = fuse_init_in()
    i.major = 7; i.minor = 38; i.flags = flags; i.flags2 = flags2
    return bytes(of: i)
}

/// A FUSE engine over `operations`, past an INIT offering `flags` and `flags2`.
public func initializedServer(_ operations: FUSEOperations, flags: UInt32 = 0, flags2: UInt32 = 0) -> FUSEServer {
    let server = FUSEServer(operations: operations)
    fuseMessage(FUSE_INIT, unique: 1, body: fuseInitArgument(flags: flags, flags2: flags2)).withUnsafeBytes { server.handle($0) { _ in } }
    return server
}

/// The replies a reply sink was given, in order.
public final class Replies: @unchecked Sendable {
    public var all: [[UInt8]] = []
    public init() {}
}
