import Glibc

/// A FUSE connection as the kernel's fusectl file system shows it:
/// /sys/fs/fuse/connections/N, N being the mount's device minor.
public struct FUSEConnection: Sendable, Equatable, CustomStringConvertible {
    public let number: UInt32

    public init(number: UInt32) { self.number = number }

    /// The connection of the FUSE mount at `path` (resolved), or nil if no
    /// FUSE file system is mounted there.
    public static func mounted(at path: String) -> FUSEConnection? {
        var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard realpath(path, &resolved) != nil,
              let entry = FUSEMount.mountEntry(at: resolved.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }),
              entry.type.hasPrefix("fuse") else { return nil }
        let parts = entry.device.split(separator: ":")
        // FUSE mounts are anonymous devices: major 0, the minor is the number.
        guard parts.count == 2, parts[0] == "0", let minor = UInt32(parts[1]) else { return nil }
        return FUSEConnection(number: minor)
    }

    public var description: String { "FUSE connection \(number)" }

    static let directory = "/sys/fs/fuse/connections"

    /// Ends the connection: requests still waiting fail with ENOTCONN and
    /// the daemon's reads of /dev/fuse with ENODEV. Mounts fusectl first if
    /// it is not mounted (that needs CAP_SYS_ADMIN). Returns 0 or the errno.
    @discardableResult
    public func abort() -> Int32 {
        let path = "\(Self.directory)/\(number)/abort"
        if access("\(Self.directory)/\(number)", F_OK) != 0 {
            _ = mount("fusectl", Self.directory, "fusectl", 0, nil)
        }
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        return write(fd, "1", 1) == 1 ? 0 : errno
    }
}
