import CVhost
import Dispatch
import Glibc
import PMFSConcurrency
import Testing
@testable import FUSEProtocol
@testable import VhostUser

/// Runs `body` on a thread of its own (a blocking loop must not wait for a
/// free thread in Dispatch's pool, which has as many as there are cores).
func detachThread(_ body: @escaping @Sendable () -> Void) {
    guard let thread = JoinableThread.spawn(body) else { preconditionFailure("cannot start a thread") }
    thread.detach()
}

/// A backend serving on a fresh socket path from a background thread.
final class RunningBackend: @unchecked Sendable {
    let backend: VhostUserBackend
    let path = "/tmp/pmfs-vhost-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
    private let finished = DispatchSemaphore(value: 0)

    init(operations: StubOperations = StubOperations()) throws {
        backend = try VhostUserBackend(socketPath: path, server: FUSEServer(operations: operations))
        detachThread { [self] in
            backend.serve()
            finished.signal()
        }
    }

    /// Stops the backend; false if `serve` did not return within `seconds`.
    func stop(within seconds: Double = 1) -> Bool {
        backend.stop()
        return finished.wait(timeout: .now() + seconds) == .success
    }
}

/// The real backend over a real socket, driven by a front end and a guest
/// that break the rules: one bad peer must not crash, hang or starve it.
@Suite(.serialized) struct VhostBackendTests {
    static let ramSize = 1 << 20
    /// Four ring layouts fit in the RAM: at 0, 0x40000, 0x80000 and 0xc0000.
    static let ringSpacing: UInt64 = 0x4_0000

    struct Session {
        let running: RunningBackend
        let frontEnd: ScriptedFrontEnd
        let ram: GuestRAM
    }

    func connected() throws -> Session {
        let running = try RunningBackend()
        let frontEnd = try #require(ScriptedFrontEnd.connect(to: running.path))
        let ram = try #require(GuestRAM(size: Self.ramSize))
        try #require(frontEnd.negotiate())
        try #require(frontEnd.setMemoryTable([(ram, 0, UInt64(Self.ramSize), 0)]))
        return Session(running: running, frontEnd: frontEnd, ram: ram)
    }

    /// A fresh ring at `offset` on queue 1 answers INIT and GETATTR of the root.
    func expectServes(_ s: Session, ringAt offset: UInt64, sourceLocation: SourceLocation = #_sourceLocation) {
        let ring = HandLaidRing(in: s.ram, at: offset)
        #expect(s.frontEnd.start(ring, queue: 1), sourceLocation: sourceLocation)
        #expect(ring.request(GuestRequests.initialize()) == 0, sourceLocation: sourceLocation)
        #expect(ring.request(GuestRequests.getattrRoot()) == 0, sourceLocation: sourceLocation)
    }

    /// Starts a guest thread that kicks once, then keeps the avail index `ahead`
    /// of what came back; the function it returns stops the thread and waits for it.
    func keepOffering(_ ring: HandLaidRing, ahead: UInt16) -> () -> Void {
        let done = Flag()
        let guestStopped = DispatchSemaphore(value: 0)
        detachThread {
            var one: UInt64 = 1
            _ = write(ring.kick, &one, 8)
            while !done.isSet { ring.availableIndex = ring.usedIndex &+ ahead }
            guestStopped.signal()
        }
        return {
            done.set()
            guestStopped.wait()
        }
    }

    @Test func aSessionServesAndStops() throws {
        let s = try connected()
        expectServes(s, ringAt: 0)
        #expect(s.running.stop())
    }

    @Test func aGuestRacingAheadCannotHoldUpGetVringBase() throws {
        let s = try connected()
        let ring = HandLaidRing(in: s.ram, at: 0)
        try #require(s.frontEnd.start(ring, queue: 1))
        ring.place(GuestRequests.getattrRoot())
        // Every avail slot holds chain 0 (the memory is zeroed); the guest keeps
        // the avail index far ahead of what came back, so there is always more.
        let stopGuest = keepOffering(ring, ahead: 0x7fff)
        usleep(100_000)
        #expect(s.frontEnd.stopRing(1, timeout: 1) != nil)
        stopGuest()
        expectServes(s, ringAt: Self.ringSpacing)
        #expect(s.running.stop())
    }

    @Test func aGuestKeepingItsRingFullCannotHoldUpGetVringBase() throws {
        let s = try connected()
        let ring = HandLaidRing(in: s.ram, at: 0)
        try #require(s.frontEnd.start(ring, queue: 1))
        // Valid chains that are slow to walk, a full ring of them offered
        // again as soon as any comes back: the worker never runs out (unless
        // this guest thread is descheduled on a busy machine, so the old hang
        // does not show every time; the racing guest above shows it always).
        ring.placeSlowly(GuestRequests.getattrRoot(), tableAt: 3 * Self.ringSpacing, padding: 1000)
        let stopGuest = keepOffering(ring, ahead: ring.size)
        // The worker is serving (up to 10 s on a loaded machine), then asked to stop.
        var waited = 0
        while ring.usedIndex == 0 && waited < 1000 { usleep(10_000); waited += 1 }
        #expect(ring.usedIndex > 0)
        #expect(s.frontEnd.stopRing(1, timeout: 1) != nil)
        stopGuest()
        expectServes(s, ringAt: Self.ringSpacing)
        #expect(s.running.stop())
    }

    @Test func aGuestKeepingItsRingFullCannotHoldUpShutdown() throws {
        let s = try connected()
        let ring = HandLaidRing(in: s.ram, at: 0)
        try #require(s.frontEnd.start(ring, queue: 1))
        ring.placeSlowly(GuestRequests.getattrRoot(), tableAt: 3 * Self.ringSpacing, padding: 1000)
        let stopGuest = keepOffering(ring, ahead: ring.size)
        usleep(100_000)
        // The daemon's SIGTERM path: the connection ends, the device is reset.
        #expect(s.running.stop())
        stopGuest()
    }

    @Test func anAvailIndexFarAheadIsABrokenRing() throws {
        let s = try connected()
        let ring = HandLaidRing(in: s.ram, at: 0)
        try #require(s.frontEnd.start(ring, queue: 1))
        ring.place(GuestRequests.getattrRoot())
        ring.availableIndex = 1000
        var one: UInt64 = 1
        _ = write(ring.kick, &one, 8)
        usleep(50_000)
        #expect(ring.usedIndex == 0)
        #expect(s.frontEnd.stopRing(1) != nil)
        expectServes(s, ringAt: Self.ringSpacing)
        #expect(s.running.stop())
    }

    @Test func aMemoryTableThatNoLongerCoversTheRingDetachesIt() throws {
        let s = try connected()
        let ring = HandLaidRing(in: s.ram, at: 2 * Self.ringSpacing)
        try #require(s.frontEnd.start(ring, queue: 1))
        #expect(ring.request(GuestRequests.initialize()) == 0)
        // Only the first half of the RAM from now on: the running ring is outside it.
        #expect(s.frontEnd.setMemoryTable([(s.ram, 0, UInt64(Self.ramSize / 2), 0)]))
        #expect(ring.request(GuestRequests.getattrRoot(), timeout: 0.2) == nil)
        #expect(s.frontEnd.stopRing(1) != nil)
        expectServes(s, ringAt: 0)
        #expect(s.running.stop())
    }

    @Test func ringSizeChangedOnARunningRingIsCheckedAgain() throws {
        let s = try connected()
        let ring = HandLaidRing(in: s.ram, at: 3 * Self.ringSpacing)
        try #require(s.frontEnd.start(ring, queue: 1))
        #expect(ring.request(GuestRequests.initialize()) == 0)
        // 32768 entries from here run past the end of guest memory: the ring
        // must stop rather than be walked with the new size.
        s.frontEnd.ask(.setVringNum, bytes(UInt32(1), UInt32(32768)))
        #expect(ring.request(GuestRequests.getattrRoot(), timeout: 0.2) == nil)
        // Back to a size that fits: the ring runs again (and answers what was waiting).
        #expect(s.frontEnd.ask(.setVringNum, bytes(UInt32(1), UInt32(ring.size))))
        #expect(s.frontEnd.setAddress(ring, queue: 1))
        #expect(ring.request(GuestRequests.getattrRoot()) == 0)
        #expect(s.frontEnd.stopRing(1) != nil)
        #expect(s.running.stop())
    }

    @Test func ringMovedOnARunningRingIsServedAtItsNewPlace() throws {
        let s = try connected()
        let first = HandLaidRing(in: s.ram, at: 0)
        try #require(s.frontEnd.start(first, queue: 1))
        #expect(first.request(GuestRequests.initialize()) == 0)
        let moved = HandLaidRing(in: s.ram, at: Self.ringSpacing)
        moved.carryOn(from: first)
        #expect(s.frontEnd.setAddress(moved, queue: 1))
        #expect(moved.request(GuestRequests.getattrRoot(), kick: first.kick) == 0)
        #expect(s.frontEnd.stopRing(1) != nil)
        #expect(s.running.stop())
    }

    @Test func aRegionLargerThanItsFileIsRefused() throws {
        let s = try connected()
        let small = try #require(GuestRAM(size: 0x4_0000))
        // Touching a mapping past the end of its file would raise SIGBUS.
        #expect(!s.frontEnd.setMemoryTable([(small, 0, UInt64(Self.ramSize), 0)]))
        #expect(!s.frontEnd.setMemoryTable([(small, 0, UInt64(small.size), 0x1000)]))
        #expect(s.frontEnd.setMemoryTable([(small, 0, UInt64(small.size), 0)]))
        let ring = HandLaidRing(in: small, at: 0)
        #expect(s.frontEnd.start(ring, queue: 1))
        #expect(ring.request(GuestRequests.initialize()) == 0)
        #expect(s.running.stop())
    }

    /// True once every copy of a pipe's write end is closed (the read end sees EOF).
    func writeEndClosed(_ readEnd: Int32) -> Bool {
        var p = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 1000) == 1 && p.revents & Int16(POLLHUP) != 0
    }

    @Test func fdsOnMessagesThatTakeNoneAreClosed() throws {
        let s = try connected()
        for (request, payload) in [(ScriptedFrontEnd.Request.setFeatures, bytes(ScriptedFrontEnd.featureProtocol)),
                                   (.setVringNum, bytes(UInt32(1), UInt32(8))), (.setVringEnable, bytes(UInt32(1), UInt32(0)))] {
            var ends: [Int32] = [-1, -1]
            try #require(pipe(&ends) == 0)
            s.frontEnd.ask(request, payload, fds: [ends[1]])
            close(ends[1])
            #expect(writeEndClosed(ends[0]), "\(request)")
            close(ends[0])
        }
        // An unknown request, and a kick with an extra fd.
        var ends: [Int32] = [-1, -1]
        try #require(pipe(&ends) == 0)
        s.frontEnd.send(99, flags: ScriptedFrontEnd.versionFlag | ScriptedFrontEnd.needReplyFlag, fds: [ends[1]])
        _ = s.frontEnd.receive()
        let ring = HandLaidRing(in: s.ram, at: 0)
        s.frontEnd.ask(.setVringKick, bytes(UInt64(1)), fds: [ring.kick, ends[1]])
        close(ends[1])
        #expect(writeEndClosed(ends[0]))
        close(ends[0])
        #expect(s.running.stop())
    }

    /// A reply is owed but cannot be given (no queue index): the connection
    /// ends rather than leave the front end waiting, and the next one is served.
    @Test func getVringBaseWithoutAnIndexEndsTheConnection() throws {
        let s = try connected()
        s.frontEnd.send(ScriptedFrontEnd.Request.getVringBase.rawValue)
        #expect(s.frontEnd.receive() == nil)
        let next = try #require(ScriptedFrontEnd.connect(to: s.running.path))
        #expect(next.negotiate())
        #expect(s.running.stop())
    }

    @Test func aCallFdThatCannotBeWrittenDoesNotBlockTheQueue() throws {
        let s = try connected()
        let ring = HandLaidRing(in: s.ram, at: 0)
        try #require(s.frontEnd.start(ring, queue: 1))
        // A pipe could block the worker (full) or raise SIGPIPE (no reader): refused.
        var ends: [Int32] = [-1, -1]
        try #require(pipe(&ends) == 0)
        close(ends[0])
        #expect(!s.frontEnd.ask(.setVringCall, bytes(UInt64(1)), fds: [ends[1]]))
        close(ends[1])
        // An eventfd whose counter is full: a blocking write to it would never return.
        let full = cvhost_eventfd()
        defer { close(full) }
        _ = fcntl(full, F_SETFL, 0)
        var most: UInt64 = 0xffff_ffff_ffff_fffe
        #expect(write(full, &most, 8) == 8)
        #expect(s.frontEnd.ask(.setVringCall, bytes(UInt64(1)), fds: [full]))
        #expect(ring.request(GuestRequests.initialize()) == 0)
        #expect(ring.request(GuestRequests.getattrRoot()) == 0)
        #expect(s.frontEnd.stopRing(1) != nil)
        #expect(s.running.stop())
    }
}

@Suite struct RequestPoolTests {
    @Test func aFullQueueRunsTheTaskOnTheCaller() {
        let pool = RequestPool(threads: 1, queueLimit: 2)
        defer { pool.stop() }
        let release = DispatchSemaphore(value: 0)
        let started = DispatchSemaphore(value: 0)
        pool.submit { started.signal(); release.wait() }
        started.wait()
        // The only thread is busy: two tasks wait, the third is the caller's.
        let ran = Flag()
        pool.submit {}
        pool.submit {}
        let caller = pthread_self()
        let onCaller = Flag()
        pool.submit { ran.set(); if pthread_equal(pthread_self(), caller) != 0 { onCaller.set() } }
        #expect(ran.isSet && onCaller.isSet)
        release.signal()
        pool.waitIdle()
    }
}

@Suite struct InFlightLimitTests {
    @Test func aChainOfferedAgainBeforeItCameBackBreaksTheRing() throws {
        let g = FakeGuest(queueSize: 4)
        g.placeRequestChain()
        // A ring's worth in flight is fine, and each one back makes room for one more.
        for _ in 0..<4 { g.offer(0); #expect(try g.queue.pop() != nil) }
        g.queue.push(0, length: 0)
        g.offer(0)
        #expect(try g.queue.pop() != nil)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.overrun) { try g.queue.pop() }
        #expect(g.queue.broken)
    }
}
