// pmfsd's control socket: root-only, one JSON request per line, answered in
// order. One thread polls every connection, so a slow or silent client holds
// nothing but its slot, and an idle one loses that after a while. A listener
// given with serve-fd is served while the connection that gave it stays open.
import CVhost
import Glibc
import Logging
import PMFSConcurrency
import PMFSControl
import Synchronization

/// What the control socket's requests do (ControlCommands).
protocol ControlHandler: AnyObject {
    /// Answers one request. `fd` came with it and is the handler's to keep or
    /// close. `held`: a listener the connection now keeps alive.
    func handle(_ request: ControlRequest, fd: Int32?, peer: PeerCredentials) -> (response: ControlResponse, held: Int?)
    /// The connection that held `listener` closed.
    func release(_ listener: Int)
}

final class ControlServer: @unchecked Sendable {
    /// Connections at once; each launcher (one per VM) holds one for as long as its VM runs.
    static let maxConnections = 256
    /// A connection that holds no listener and sends no complete request for this long is closed.
    static let idleSeconds: UInt64 = 10
    /// Listeners one connection may hold (a launcher needs one).
    static let maxListenersPerConnection = 16

    private struct Connection {
        let fd: Int32
        let peer: PeerCredentials
        var buffer: [UInt8] = []
        /// A descriptor that came with bytes not yet answered (at most one is kept).
        var passed: Int32 = -1
        var held: [Int] = []
        var lastRequest: UInt64
    }

    let path: String
    private let listenFD: Int32
    private let wakeFD: Int32
    private let handler: ControlHandler
    private let logger: Logger
    private var connections: [Connection] = []
    /// The polling thread until stop() took it (stop may be called twice, from two threads).
    private let thread = Mutex<JoinableThread?>(nil)

    init(path: String, handler: ControlHandler, logger: Logger) throws {
        self.path = path
        self.handler = handler
        self.logger = logger
        listenFD = try Self.listen(at: path)
        wakeFD = cvhost_eventfd()
        guard wakeFD >= 0 else { close(listenFD); throw ControlError("eventfd: \(String(cString: strerror(errno)))") }
    }

    /// Binds `path` mode 0600 (root only, as its directory is made). A socket
    /// file that no one answers on is a dead pmfsd's and is replaced; a live
    /// one belongs to another pmfsd and is an error.
    private static func listen(at path: String) throws -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw ControlError("--control: path too long: \(path)") }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        if (try? ControlClient(path: path)) != nil { throw ControlError("--control \(path): another pmfsd answers there") }
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            mkdir(String(path[..<slash]), 0o700)   // /run/pmfs: fails harmlessly when it exists
        }
        var existing = stat()
        if lstat(path, &existing) == 0 {
            // Only a socket is replaced: --control naming any other file is a mistake, not a file to delete.
            guard existing.st_mode & S_IFMT == S_IFSOCK else { throw ControlError("--control \(path): exists and is not a socket") }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlError("socket: \(String(cString: strerror(errno)))") }
        // Made 0600 from the start: no moment in which another user could connect.
        let oldMask = umask(0o177)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        let bindErrno = errno
        umask(oldMask)
        // Non-blocking: the poll thread accepts until none is waiting, and never waits in accept.
        guard rc == 0, Glibc.listen(fd, 64) == 0, fcntl(fd, F_SETFL, O_NONBLOCK) == 0 else {
            close(fd)
            throw ControlError("--control: cannot listen on \(path): \(String(cString: strerror(rc == 0 ? errno : bindErrno)))")
        }
        return fd
    }

    func start() {
        let t = JoinableThread { [self] in run() }
        thread.withLock { $0 = t }
        t.start()
    }

    /// Closes every connection (their listeners are released) and the socket.
    /// Only the first call does anything: the thread closes the eventfd as it ends.
    func stop() {
        guard let t = thread.withLock({ t in defer { t = nil }; return t }) else { return }
        _ = cvhost_eventfd_signal(wakeFD)
        t.join()
    }

    private func run() {
        while true {
            var polled = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
            polled += connections.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            let n = poll(&polled, nfds_t(polled.count), 1000)
            if n < 0 && errno != EINTR { logger.error("control socket: poll: \(String(cString: strerror(errno)))"); break }
            if polled[1].revents != 0 { break }
            // Connections first, by descriptor: indices shift as some close.
            let ready = polled.dropFirst(2).filter { $0.revents != 0 }.map(\.fd)
            for fd in ready { if let i = connections.firstIndex(where: { $0.fd == fd }) { receive(i) } }
            if polled[0].revents & Int16(POLLIN) != 0 { while accept() {} }
            closeIdle()
        }
        while !connections.isEmpty { disconnect(connections.count - 1) }
        close(listenFD)
        close(wakeFD)
        unlink(path)
    }

    /// Takes one waiting connection; false when none was waiting.
    private func accept() -> Bool {
        let fd = cvhost_accept(listenFD)
        guard fd >= 0 else { return false }
        guard let peer = PeerCredentials(socket: fd) else { close(fd); return true }
        // Root only (or pmfsd's own user, when it is not root): a client can make pmfsd serve any of its tree.
        guard peer.uid == 0 || peer.uid == geteuid() else {
            logger.warning("control socket: refused uid \(peer.uid) (pid \(peer.pid))")
            reply(fd, .failure("permission denied: the control socket is for root"))
            close(fd)
            return true
        }
        guard connections.count < Self.maxConnections else {
            logger.warning("control socket: \(Self.maxConnections) connections open; refused pid \(peer.pid)")
            reply(fd, .failure("too many control connections"))
            close(fd)
            return true
        }
        // A client that does not read its responses must not stall this thread.
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        connections.append(Connection(fd: fd, peer: peer, lastRequest: monotonicNanoseconds()))
        return true
    }

    private func receive(_ i: Int) {
        var chunk = [UInt8](repeating: 0, count: ControlProtocol.maxRequestBytes + 1)
        var fds: [Int32] = [-1, -1]
        var nfds: Int32 = 0
        let n = chunk.withUnsafeMutableBytes { cvhost_recv_with_fds(connections[i].fd, $0.baseAddress, $0.count, &fds, 2, &nfds) }
        for k in 0..<Int(max(0, min(nfds, 2))) {
            // One descriptor per request: extras are closed, not kept.
            if connections[i].passed < 0 { connections[i].passed = fds[k] } else { close(fds[k]) }
        }
        guard n > 0 else { disconnect(i); return }
        connections[i].buffer += chunk[..<n]
        while let end = connections[i].buffer.firstIndex(of: UInt8(ascii: "\n")) {
            let line = Array(connections[i].buffer[..<end])
            connections[i].buffer.removeSubrange(...end)
            guard answer(i, line) else { disconnect(i); return }
        }
        if connections[i].buffer.count > ControlProtocol.maxRequestBytes {
            reply(connections[i].fd, .failure("request longer than \(ControlProtocol.maxRequestBytes) bytes"))
            disconnect(i)
        }
    }

    /// Answers one line; false when the connection must close (not a request at all).
    private func answer(_ i: Int, _ line: [UInt8]) -> Bool {
        connections[i].lastRequest = monotonicNanoseconds()
        let fd = connections[i].passed
        connections[i].passed = -1
        guard line.count <= ControlProtocol.maxRequestBytes else {
            if fd >= 0 { close(fd) }
            reply(connections[i].fd, .failure("request longer than \(ControlProtocol.maxRequestBytes) bytes"))
            return false
        }
        guard let request = try? ControlProtocol.decode(ControlRequest.self, from: line) else {
            if fd >= 0 { close(fd) }
            logger.warning("control socket: pid \(connections[i].peer.pid) sent something that is not a request; disconnected")
            reply(connections[i].fd, .failure("not a control request: one JSON object per line, like {\"command\":\"info\"}"))
            return false
        }
        var response: ControlResponse
        if request.command == "serve-fd" && connections[i].held.count >= Self.maxListenersPerConnection {
            if fd >= 0 { close(fd) }
            response = .failure("this connection holds \(Self.maxListenersPerConnection) listeners already")
        } else {
            let result = handler.handle(request, fd: fd >= 0 ? fd : nil, peer: connections[i].peer)
            response = result.response
            if let held = result.held { connections[i].held.append(held) }
        }
        return reply(connections[i].fd, response)
    }

    @discardableResult
    private func reply(_ fd: Int32, _ response: ControlResponse) -> Bool {
        let bytes = ControlProtocol.encode(response)
        return bytes.withUnsafeBytes { cvhost_send(fd, $0.baseAddress, $0.count) } == bytes.count
    }

    private func disconnect(_ i: Int) {
        let c = connections.remove(at: i)
        if c.passed >= 0 { close(c.passed) }
        c.held.forEach { handler.release($0) }
        close(c.fd)
    }

    private func closeIdle() {
        let now = monotonicNanoseconds()
        let limit = Self.idleSeconds * 1_000_000_000
        for i in connections.indices.reversed() where connections[i].held.isEmpty && now &- connections[i].lastRequest > limit {
            logger.info("control socket: pid \(connections[i].peer.pid) idle for \(Self.idleSeconds) s; disconnected")
            disconnect(i)
        }
    }
}
