import CPMDK
import Glibc

/// Block 0 of the data device: which file system and which device this is, so
/// a pool is never served with the wrong data device.
public struct DataDeviceHeader: Equatable, Sendable {
    public var blockSize: UInt32
    public var blockCount: UInt64
    public var fsUUID: [UInt8]
    public var dataUUID: [UInt8]

    public init(blockSize: UInt32, blockCount: UInt64, fsUUID: [UInt8], dataUUID: [UInt8]) {
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.fsUUID = fsUUID
        self.dataUUID = dataUUID
    }

    /// The size of a block device or regular file, in bytes.
    public static func deviceSize(path: String) throws -> UInt64 {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw PoolError.dataDevice(path: path, reason: String(cString: strerror(errno))) }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw PoolError.dataDevice(path: path, reason: String(cString: strerror(errno))) }
        switch st.st_mode & S_IFMT {
        case S_IFREG: return UInt64(st.st_size)
        case S_IFBLK:
            let end = lseek(fd, 0, SEEK_END)
            guard end >= 0 else { throw PoolError.dataDevice(path: path, reason: String(cString: strerror(errno))) }
            return UInt64(end)
        default: throw PoolError.dataDevice(path: path, reason: "not a regular file or block device")
        }
    }

    public func write(to path: String) throws {
        var raw = pmfs_data_header()
        raw.magic = PMFS_DATA_MAGIC
        raw.format_version = PMFS_FORMAT_VERSION
        raw.block_size = blockSize
        raw.block_count = blockCount
        withUnsafeMutableBytes(of: &raw.fs_uuid) { $0.copyBytes(from: fsUUID.prefix(16)) }
        withUnsafeMutableBytes(of: &raw.data_uuid) { $0.copyBytes(from: dataUUID.prefix(16)) }
        raw.checksum = withUnsafeBytes(of: &raw) { fnv1a64(UnsafeRawBufferPointer(rebasing: $0[..<MemoryLayout<pmfs_data_header>.offset(of: \.checksum)!])) }
        var block = [UInt8](repeating: 0, count: Int(blockSize))
        withUnsafeBytes(of: &raw) { h in block.withUnsafeMutableBytes { $0.copyMemory(from: h) } }
        let fd = Glibc.open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw PoolError.dataDevice(path: path, reason: String(cString: strerror(errno))) }
        defer { Glibc.close(fd) }
        let n = block.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        guard n == block.count, fdatasync(fd) == 0 else {
            throw PoolError.dataDevice(path: path, reason: "writing the header: \(String(cString: strerror(errno)))")
        }
    }

    /// Reads and checks the header; nil if block 0 holds no pmfs header.
    public static func read(from path: String) throws -> DataDeviceHeader? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw PoolError.dataDevice(path: path, reason: String(cString: strerror(errno))) }
        defer { Glibc.close(fd) }
        var raw = pmfs_data_header()
        let n = withUnsafeMutableBytes(of: &raw) { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n == MemoryLayout<pmfs_data_header>.size, raw.magic == PMFS_DATA_MAGIC else { return nil }
        let sum = withUnsafeBytes(of: &raw) { fnv1a64(UnsafeRawBufferPointer(rebasing: $0[..<MemoryLayout<pmfs_data_header>.offset(of: \.checksum)!])) }
        guard sum == raw.checksum else { throw PoolError.dataDevice(path: path, reason: "header checksum mismatch") }
        return DataDeviceHeader(blockSize: raw.block_size, blockCount: raw.block_count,
                                fsUUID: withUnsafeBytes(of: raw.fs_uuid) { Array($0) },
                                dataUUID: withUnsafeBytes(of: raw.data_uuid) { Array($0) })
    }
}

/// A random 16-byte UUID (version 4).
public func randomUUID() -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: 16)
    for i in 0..<16 { bytes[i] = UInt8.random(in: 0...255) }
    bytes[6] = (bytes[6] & 0x0F) | 0x40
    bytes[8] = (bytes[8] & 0x3F) | 0x80
    return bytes
}

public func formatUUID(_ b: [UInt8]) -> String {
    let hex = b.map { String(format2: $0) }
    return hex[0..<4].joined() + "-" + hex[4..<6].joined() + "-" + hex[6..<8].joined() + "-" + hex[8..<10].joined() + "-" + hex[10..<16].joined()
}

public func parseUUID(_ s: String) -> [UInt8]? {
    let hex = s.filter { $0 != "-" }
    guard hex.count == 32 else { return nil }
    var out: [UInt8] = []
    var i = hex.startIndex
    while i < hex.endIndex {
        let j = hex.index(i, offsetBy: 2)
        guard let v = UInt8(hex[i..<j], radix: 16) else { return nil }
        out.append(v)
        i = j
    }
    return out
}

extension String {
    init(format2 byte: UInt8) {
        let s = String(byte, radix: 16)
        self = s.count == 1 ? "0" + s : s
    }
}
