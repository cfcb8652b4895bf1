import CFUSE

/// Errors of the wire layer: a request too short or inconsistent to decode.
public enum FUSEWireError: Error, Sendable {
    case truncated(needed: Int, available: Int)
    case malformed(String)
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
