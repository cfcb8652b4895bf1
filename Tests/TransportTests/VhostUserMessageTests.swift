import Glibc
import Testing
@testable import VhostUser

/// The vhost-user codec: fields read only where the body has them, and every
/// fd received kept by the decoded message or closed.
@Suite struct VhostUserMessageTests {
    /// A pipe: the write end goes into a message; the read end tells whether
    /// it was closed (POLLHUP), whatever reuses its number meanwhile.
    private final class Probe {
        let read: Int32, write: Int32
        init() {
            var ends: [Int32] = [-1, -1]
            _ = pipe(&ends)
            (read, write) = (ends[0], ends[1])
        }
        var writeEndClosed: Bool {
            var p = pollfd(fd: read, events: Int16(POLLIN), revents: 0)
            return poll(&p, 1, 0) == 1 && p.revents & Int16(POLLHUP) != 0
        }
        deinit { close(read) }
    }

    @Test func shortBodiesAreMalformedNotRead() {
        for (request, size) in [(VhostUserBackend.Request.setFeatures, 7), (.setVringNum, 7), (.setVringAddr, 31), (.getVringBase, 3), (.setVringEnable, 4)] {
            guard case .malformed(let r) = VhostUserMessage(code: request.rawValue, body: [UInt8](repeating: 1, count: size), fds: []) else {
                Issue.record("\(request) with \(size) bytes decoded"); continue
            }
            #expect(r == request)
        }
        guard case .setVringAddr(queue: 1, descriptors: 2, used: 3, available: 4) = VhostUserMessage(
            code: VhostUserBackend.Request.setVringAddr.rawValue,
            body: [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0], fds: []) else {
            Issue.record("a whole SET_VRING_ADDR did not decode"); return
        }
    }

    @Test func fdsAreKeptOrClosed() {
        let (a, b, c) = (Probe(), Probe(), Probe())
        // An unknown code and a message that takes no fd close what came with them.
        _ = VhostUserMessage(code: 999, body: [], fds: [a.write])
        _ = VhostUserMessage(code: VhostUserBackend.Request.getFeatures.rawValue, body: [], fds: [b.write])
        #expect(a.writeEndClosed && b.writeEndClosed)
        // SET_VRING_KICK keeps its first fd and closes the others.
        let (d, e) = (Probe(), Probe())
        guard case .setVringFD(.setVringKick, queue: 2, fd: let kept) = VhostUserMessage(
            code: VhostUserBackend.Request.setVringKick.rawValue, body: [2, 0, 0, 0, 0, 0, 0, 0], fds: [d.write, e.write]) else {
            Issue.record("SET_VRING_KICK did not decode"); return
        }
        #expect(kept == d.write && !d.writeEndClosed && e.writeEndClosed)
        close(kept)
        // A memory table whose count does not match its fds is refused, its fds closed.
        var body = [UInt8](repeating: 0, count: 8 + 64)
        body[0] = 2
        guard case .malformed(.setMemTable) = VhostUserMessage(code: VhostUserBackend.Request.setMemTable.rawValue, body: body, fds: [c.write]) else {
            Issue.record("a memory table with 2 regions and 1 fd decoded"); return
        }
        #expect(c.writeEndClosed)
    }
}
