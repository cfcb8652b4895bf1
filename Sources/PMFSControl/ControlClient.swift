import CVhost
import Glibc

public struct ControlError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// One connection to pmfsd's control socket. A serve-fd given on it lasts as
/// long as the connection: closing it (or exiting) makes pmfsd stop serving
/// that socket.
public final class ControlClient {
    public let path: String
    /// The connected socket (poll it to learn that the daemon went away).
    public let descriptor: Int32
    private var pending: [UInt8] = []
    /// A response longer than this is refused (sessions of many guests fit easily).
    static let maxResponseBytes = 16 << 20

    public init(path: String) throws {
        self.path = path
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw ControlError("control socket path too long: \(path)") }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlError("socket: \(String(cString: strerror(errno)))") }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw ControlError("cannot connect to the pmfsd control socket \(path): \(e)")
        }
        descriptor = fd
    }

    deinit { close(descriptor) }

    /// Sends a request (with `passing` attached as SCM_RIGHTS) and waits for its response.
    public func call(_ request: ControlRequest, passing fd: Int32? = nil) throws -> ControlResponse {
        let line = ControlProtocol.encode(request)
        try sendLine(line, passing: fd)
        let reply = try readLine()
        do { return try ControlProtocol.decode(ControlResponse.self, from: reply) } catch {
            throw ControlError("pmfsd sent a response that is not JSON: \(String(decoding: reply.prefix(200), as: UTF8.self))")
        }
    }

    /// The same, failing with the daemon's message when it says no.
    public func callOK(_ request: ControlRequest, passing fd: Int32? = nil) throws -> ControlResponse {
        let response = try call(request, passing: fd)
        guard response.ok else { throw ControlError(response.error ?? "pmfsd refused \(request.command)") }
        return response
    }

    public func sendLine(_ line: [UInt8], passing fd: Int32? = nil) throws {
        let n: Int
        if let fd {
            var fds = [fd]
            n = line.withUnsafeBytes { cvhost_send_with_fds(descriptor, $0.baseAddress, $0.count, &fds, 1) }
        } else {
            n = line.withUnsafeBytes { cvhost_send(descriptor, $0.baseAddress, $0.count) }
        }
        guard n == line.count else { throw ControlError("sending to \(path): \(n < 0 ? String(cString: strerror(Int32(-n))) : "short write")") }
    }

    /// The next response line (without its newline).
    public func readLine() throws -> [UInt8] {
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            if let end = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[..<end])
                pending.removeSubrange(...end)
                return line
            }
            guard pending.count <= Self.maxResponseBytes else { throw ControlError("response from \(path) is longer than \(Self.maxResponseBytes) bytes") }
            let n = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw ControlError("reading from \(path): \(String(cString: strerror(errno)))") }
            if n == 0 { throw ControlError("pmfsd closed the control connection \(path)") }
            pending += chunk[..<n]
        }
    }

    /// Blocks until the daemon closes the connection (or sends something unasked).
    public func waitUntilClosed() {
        var p = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        while poll(&p, 1, -1) < 0 && errno == EINTR {}
    }
}

/// Who is at the other end of a Unix socket (SO_PEERCRED: struct ucred, which
/// Glibc's module does not import without _GNU_SOURCE; its layout is the
/// kernel's: pid, uid, gid, 32 bits each).
public struct PeerCredentials: Sendable {
    public let pid: Int32
    public let uid: UInt32
    public let gid: UInt32

    public init?(socket fd: Int32) {
        var raw = [UInt32](repeating: 0, count: 3)
        var length = socklen_t(12)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &raw, &length) == 0, length == 12 else { return nil }
        pid = Int32(bitPattern: raw[0]); uid = raw[1]; gid = raw[2]
    }
}
