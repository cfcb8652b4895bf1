import CFUSE

/// Errors of the wire layer: a request too short or inconsistent to decode.
public enum FUSEWireError: Error, Sendable {
    case truncated(needed: Int, available: Int)
    case malformed(String)
}

/// Reads fixed-layout structs and strings from a request, never past its end.
/// Every accessor checks bounds and throws instead of trapping: a hostile or
/// buggy peer gets an error reply, the daemon keeps running.
public struct RequestReader {
    private let bytes: UnsafeRawBufferPointer
    public private(set) var position = 0

    public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    public var remaining: Int { bytes.count - position }

    public mutating func read<T>(_ type: T.Type = T.self) throws -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw FUSEWireError.truncated(needed: size, available: remaining) }
        let value = bytes.loadUnaligned(fromByteOffset: position, as: T.self)
        position += size
        return value
    }

    /// A struct that older peers send shorter (compat sizes): missing bytes read as zero.
    public mutating func readPadded<T>(_ type: T.Type = T.self, minimum: Int) throws -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= minimum else { throw FUSEWireError.truncated(needed: minimum, available: remaining) }
        if remaining >= size { return try read(T.self) }
        var buffer = [UInt8](repeating: 0, count: size)
        let n = remaining
        buffer.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[position..<(position + n)])) }
        position += n
        return buffer.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
    }

    /// A NUL-terminated name; the NUL is consumed, not returned.
    public mutating func readCString() throws -> [UInt8] {
        guard let end = bytes[position...].firstIndex(of: 0) else { throw FUSEWireError.malformed("string without NUL") }
        let s = Array(bytes[position..<end])
        position = end + 1
        return s
    }

    public mutating func readBytes(_ count: Int) throws -> UnsafeRawBufferPointer {
        guard count >= 0, remaining >= count else { throw FUSEWireError.truncated(needed: count, available: remaining) }
        let slice = UnsafeRawBufferPointer(rebasing: bytes[position..<(position + count)])
        position += count
        return slice
    }

    public mutating func skip(_ count: Int) throws {
        guard count >= 0, remaining >= count else { throw FUSEWireError.truncated(needed: count, available: remaining) }
        position += count
    }
}

/// Builds one reply message: the out-header, then the payload.
public struct ReplyBuilder {
    public private(set) var bytes: [UInt8]

    public init(unique: UInt64, error: Int32 = 0, capacity: Int = 256) {
        bytes = []
        bytes.reserveCapacity(MemoryLayout<fuse_out_header>.size + capacity)
        var header = fuse_out_header(len: 0, error: -error, unique: unique)
        withUnsafeBytes(of: &header) { bytes.append(contentsOf: $0) }
    }

    public mutating func append<T>(_ value: T) {
        var v = value
        withUnsafeBytes(of: &v) { bytes.append(contentsOf: $0) }
    }

    public mutating func append(bytes more: UnsafeRawBufferPointer) { bytes.append(contentsOf: more) }
    public mutating func append(contentsOf more: [UInt8]) { bytes.append(contentsOf: more) }

    /// Pads with zeros to a multiple of 8 (directory records).
    public mutating func alignTo8() {
        while bytes.count % 8 != 0 { bytes.append(0) }
    }

    public var count: Int { bytes.count }

    /// The finished message with its length filled in (the builder is used
    /// up, so its bytes are not copied).
    public consuming func finish() -> [UInt8] {
        var out = bytes
        let length = UInt32(out.count)
        withUnsafeBytes(of: length) { l in out.withUnsafeMutableBytes { $0.copyMemory(from: l) } }
        return out
    }

    /// Direct access for payloads read straight into the reply (READ).
    public mutating func appendUninitialized(_ count: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Int) rethrows {
        let start = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: count))
        let used = try bytes.withUnsafeMutableBytes { try fill(UnsafeMutableRawBufferPointer(rebasing: $0[start..<(start + count)])) }
        bytes.removeLast(count - max(0, min(used, count)))
    }
}
