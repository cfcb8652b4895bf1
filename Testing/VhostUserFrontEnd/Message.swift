/// vhost-user control messages as a front end writes them
/// (QEMU docs/interop/vhost-user.rst): a 12-byte header, then the payload.
public enum VhostUserMessage {
    public enum Request: UInt32 {
        case getFeatures = 1, setFeatures, setOwner, resetOwner, setMemTable, setLogBase, setLogFD
        case setVringNum, setVringAddr, setVringBase, getVringBase, setVringKick, setVringCall, setVringErr
        case getProtocolFeatures, setProtocolFeatures, getQueueNum, setVringEnable
        case setBackendReqFD = 21
        case getConfig = 24, setConfig
        case resetDevice = 34
        case getMaxMemSlots = 36
    }

    public static let version: UInt32 = 0x1
    public static let needReply: UInt32 = 0x8

    public static func header(_ code: UInt32, flags: UInt32, size: UInt32) -> [UInt8] {
        bytes(of: code) + bytes(of: flags) + bytes(of: size)
    }

    public static func bytes<T>(of value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }
    public static func u64(_ v: UInt64) -> [UInt8] { bytes(of: v) }
    public static func u32Pair(_ a: UInt32, _ b: UInt32) -> [UInt8] { bytes(of: a) + bytes(of: b) }

    /// SET_MEM_TABLE with one region.
    public static func memoryTable(guestPhysical: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) -> [UInt8] {
        u32Pair(1, 0) + u64(guestPhysical) + u64(size) + u64(userAddress) + u64(mmapOffset)
    }

    /// SET_VRING_ADDR: index, flags, then descriptor, used, available and log addresses.
    public static func ringAddresses(_ queue: UInt32, descriptors: UInt64, used: UInt64, available: UInt64) -> [UInt8] {
        u32Pair(queue, 0) + u64(descriptors) + u64(used) + u64(available) + u64(0)
    }
}
