import Foundation
import Glibc
import Testing
import VhostUserFrontEnd

/// pmfsd itself, serving two guest sockets and the host mount, when one front
/// end shrinks its memfd under the daemon's mapping.
@Suite(.serialized) struct ShrunkMemoryDaemonTests {
    @Test func pmfsdOutlivesAFrontEndThatShrinksItsMemory() throws {
        let dir = "/dev/shm/pmfs-shrunk-e2e-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mountPoint = dir + "/mnt"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: false)
        let common = try ExportEndToEndTests.makeFileSystem(in: dir)
        let daemon = try ExportEndToEndTests.Daemon(common + ["--mount", mountPoint, "--socket", dir + "/bad.sock",
                                                              "--socket", dir + "/good.sock"],
                                                    log: URL(fileURLWithPath: dir + "/pmfsd.log"))
        do {
            let hostile = try VhostUserFrontEnd(socketPath: dir + "/bad.sock")
            let client = FUSEClient(hostile)
            _ = try client.initialize()
            _ = try client.getattr(1)
            try hostile.shrinkMemory(to: 0)
            hostile.ring(1).kick()
            #expect(hostile.waitForHangUp(timeoutMilliseconds: 5000))
        }
        #expect(kill(daemon.process.processIdentifier, 0) == 0 && daemon.process.isRunning)
        // Everyone else is still served: the other socket, the host mount, and
        // the next front end on the same socket.
        for socket in ["/good.sock", "/bad.sock"] {
            let frontEnd = try VhostUserFrontEnd(socketPath: dir + socket)
            let client = FUSEClient(frontEnd)
            _ = try client.initialize()
            #expect(try client.getattr(1).attr.ino == 1)
        }
        #expect(FileManager.default.createFile(atPath: mountPoint + "/still-here", contents: Data("yes".utf8)))
        let run = daemon.stop()
        #expect(run.status == 0, "\(run.log)")
        #expect(run.log.contains("guest memory shrank under its mapping"), "\(run.log)")
        #expect(run.log.contains("bad.sock"), "\(run.log)")
    }
}
