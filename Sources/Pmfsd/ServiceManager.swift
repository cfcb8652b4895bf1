// pmfsd under a service manager: systemd's readiness and watchdog
// notifications (sd_notify(3)'s datagram protocol) and socket activation
// (sd_listen_fds(3)'s environment). Both are a few lines of protocol, written
// here rather than linking libsystemd.
import Glibc
import Logging
import PMFSConcurrency

/// Tells the service manager that pmfsd is ready, stopping, or alive. Does
/// nothing when NOTIFY_SOCKET is not set (not started by systemd).
final class ServiceNotifier: @unchecked Sendable {
    private let socket: Int32
    private var address = sockaddr_un()
    private var addressLength: socklen_t = 0
    /// Half the watchdog interval systemd asked for (nil: no watchdog).
    let watchdogInterval: UInt32?

    init?() {
        guard let path = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !path.isEmpty else { return nil }
        var bytes = Array(path.utf8)
        // "@name" is an abstract socket: its first byte is 0.
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        socket = fd
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        addressLength = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        watchdogInterval = Self.watchdogMicroseconds().map { UInt32(min($0 / 2, UInt64(UInt32.max))) }
        // Children (none today) must not notify in pmfsd's name.
        unsetenv("NOTIFY_SOCKET")
    }

    deinit { close(socket) }

    /// WATCHDOG_USEC, if it is meant for this process.
    private static func watchdogMicroseconds() -> UInt64? {
        if let pid = getenv("WATCHDOG_PID").flatMap({ pid_t(String(cString: $0)) }), pid != getpid() { return nil }
        guard let usec = getenv("WATCHDOG_USEC").flatMap({ UInt64(String(cString: $0)) }), usec > 0 else { return nil }
        return usec
    }

    func send(_ state: String) {
        var text = state
        _ = text.withUTF8 { bytes in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(socket, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL), $0, addressLength) }
            }
        }
    }

    func ready(status: String) { send("READY=1\nSTATUS=\(status)") }
    func stopping() { send("STOPPING=1\nSTATUS=stopping") }

    /// A reload begins (READY=1 again when it is done); systemd wants the
    /// monotonic clock with it (sd_notify(3), RELOADING=1).
    func reloading() {
        send("RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=\(monotonicNanoseconds() / 1000)")
    }

    /// Pings the watchdog from a thread of its own while `alive()` holds.
    func startWatchdog(alive: @escaping @Sendable () -> Bool) {
        guard let interval = watchdogInterval else { return }
        // Ends once `alive()` fails, or with the process: no one joins it.
        JoinableThread.detached { [self] in
            while true {
                usleep(interval)
                guard alive() else { return }
                send("WATCHDOG=1")
            }
        }
    }
}

/// Listening sockets systemd passed (socket activation): descriptors 3,
/// 4, ... when LISTEN_PID names this process.
enum SocketActivation {
    static let firstDescriptor: Int32 = 3

    static func descriptors() -> [Int32] {
        guard let pid = getenv("LISTEN_PID").flatMap({ pid_t(String(cString: $0)) }), pid == getpid(),
              let count = getenv("LISTEN_FDS").flatMap({ Int32(String(cString: $0)) }), (1...1024).contains(count) else { return [] }
        unsetenv("LISTEN_PID"); unsetenv("LISTEN_FDS"); unsetenv("LISTEN_FDNAMES")
        return (0..<count).map { firstDescriptor + $0 }.filter { fcntl($0, F_SETFD, FD_CLOEXEC) == 0 }
    }
}
