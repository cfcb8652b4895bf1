import FUSEDevice
@testable import FUSEProtocol
import CFUSE
import FUSETestSupport
import FileSystemTestSupport
import Glibc
import PMFSConcurrency
import PMFSCore
import PMFSData
import PMFSMetadata
import Synchronization
import Testing
@testable import PMFSServer

/// Two sessions on one file system, as pmfsd runs them with --mount and
/// --socket: a real host mount (/dev/fuse) and a second session standing in
/// for a guest, driven through its operations. The host kernel caches names
/// and attributes for an hour here, so only the notifications can make it see
/// the other session's changes.
final class TwoSessions {
    let files: ShmFileSystem
    var metadata: MetadataStore { files.metadata }
    var fs: FileDataTier { files.fs }
    let group = SessionGroup()
    let host: PMFSOperations
    let guest: PMFSOperations
    let mount: FUSEMount
    let mountPoint: String
    private var serving: JoinableThread?

    init() throws {
        files = try ShmFileSystem(name: "coherence", dataBlocks: 8192)
        let (metadata, fs) = (files.metadata, files.fs)
        host = PMFSOperations(metadata: metadata, fs: fs, group: group)
        host.entryTimeout = 3600
        host.attributeTimeout = 3600
        guest = PMFSOperations(metadata: metadata, fs: fs, group: group)
        mountPoint = "/tmp/pmfs-coherence-\(files.tag)"
        mkdir(mountPoint, 0o755)
        mount = try FUSEMount(mountPoint: mountPoint, server: FUSEServer(operations: host), fsName: "pmfs-test")
        let m = mount
        host.listen(FUSENotificationSink { m.notify($0) })
        serving = JoinableThread.spawn { m.serve(workers: 2) }
    }

    deinit {
        mount.unmount()
        serving?.join()
        host.stopListening()
        rmdir(mountPoint)
    }

    let request = FUSERequest(unique: 1, nodeid: 1, uid: 0, gid: 0, pid: 1, opcode: 0)

    func path(_ name: String) -> String { mountPoint + "/" + name }

    func hostSize(_ name: String) -> Int? {
        var st = stat()
        return stat(path(name), &st) == 0 ? Int(st.st_size) : nil
    }

    /// The guest's view: node ID of a name in the root.
    func guestLookup(_ name: String) throws -> UInt64 {
        try guest.lookup(request, parent: 1, name: Array(name.utf8)).nodeid
    }

    func guestWrite(_ ino: UInt64, at offset: UInt64, _ bytes: [UInt8]) throws {
        let h = try guest.open(request, nodeid: ino, flags: UInt32(O_RDWR), killSuidGid: false).handle
        _ = try bytes.withUnsafeBytes { try guest.write(request, nodeid: ino, handle: h, offset: offset, data: $0, flags: 0) }
        try guest.release(request, nodeid: ino, handle: h, flags: 0, releaseFlags: 0, lockOwner: 0)
    }

    /// Polls `condition` for up to two seconds (delivery is asynchronous).
    func eventually(_ condition: () -> Bool) -> Bool {
        for _ in 0..<200 {
            if condition() { return true }
            usleep(10_000)
        }
        return condition()
    }
}

@Suite(.serialized) struct CoherenceTests {
    @Test func hostSeesGuestWritesAndNamesAtOnce() throws {
        let s = try TwoSessions()
        // The host creates a file and caches its attributes (for an hour).
        let fd = open(s.path("f"), O_CREAT | O_RDWR, 0o644)
        #expect(fd >= 0)
        #expect(write(fd, "abc", 3) == 3)
        #expect(fsync(fd) == 0)
        #expect(s.hostSize("f") == 3)

        // The guest appends: the host's cached size must go.
        let ino = try s.guestLookup("f")
        try s.guestWrite(ino, at: 3, Array("0123456789".utf8))
        #expect(s.eventually { s.hostSize("f") == 13 })

        // Cached pages too: the host reads through its open descriptor, the guest
        // overwrites, the host reads again.
        var buffer = [UInt8](repeating: 0, count: 13)
        #expect(pread(fd, &buffer, 13, 0) == 13)
        #expect(String(decoding: buffer, as: UTF8.self) == "abc0123456789")
        try s.guestWrite(ino, at: 0, Array("XYZ".utf8))
        #expect(s.eventually {
            pread(fd, &buffer, 13, 0) == 13 && String(decoding: buffer, as: UTF8.self) == "XYZ0123456789"
        })
        close(fd)

        // Names: a guest rename and unlink are seen by the host's cached dentries.
        _ = try s.guest.rename(s.request, parent: 1, name: Array("f".utf8), newParent: 1, newName: Array("g".utf8), flags: 0)
        #expect(s.eventually { s.hostSize("f") == nil && s.hostSize("g") == 13 })
        try s.guest.unlink(s.request, parent: 1, name: Array("g".utf8))
        #expect(s.eventually { s.hostSize("g") == nil })

        // A directory's attributes (its link count) follow a guest mkdir.
        var st = stat()
        #expect(stat(s.mountPoint, &st) == 0)
        let links = st.st_nlink
        _ = try s.guest.mkdir(s.request, parent: 1, name: Array("d".utf8), mode: 0o755, umask: 0)
        #expect(s.eventually { stat(s.mountPoint, &st) == 0 && st.st_nlink == links + 1 })
    }

    /// The control: without notifications the host keeps its cached view, so
    /// the test above really measures them.
    @Test func withoutNotificationsTheHostStaysStale() throws {
        let s = try TwoSessions()
        let fd = open(s.path("f"), O_CREAT | O_RDWR, 0o644)
        #expect(write(fd, "abc", 3) == 3)
        close(fd)
        #expect(s.hostSize("f") == 3)
        s.host.stopListening()
        try s.guestWrite(try s.guestLookup("f"), at: 3, Array("more".utf8))
        usleep(200_000)
        #expect(s.hostSize("f") == 3)
    }

    /// A session is not told of its own changes, and nothing is queued for
    /// inodes a listener's kernel does not hold.
    @Test func invalidationsGoOnlyToOtherSessionsThatHoldTheInode() throws {
        final class Recorder: InvalidationSink, Sendable {
            let seen = Mutex<[CacheInvalidation]>([])
            func deliver(_ i: CacheInvalidation) { seen.withLock { $0.append(i) } }
        }
        let s = try TwoSessions()
        s.host.stopListening()
        let recorder = Recorder()
        s.host.listen(recorder)
        let r = s.request
        // The host session creates "a" (its own change: nothing recorded), then
        // the guest writes it: the host holds it, so it hears of it.
        let (e, o) = try s.host.create(r, parent: 1, name: Array("a".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        try s.host.release(r, nodeid: e.nodeid, handle: o.handle, flags: 0, releaseFlags: 0, lockOwner: 0)
        try s.guestWrite(try s.guestLookup("a"), at: 0, [1, 2, 3])
        // The guest creates "b" in a directory the host never looked up: dropped.
        let dir = try s.guest.mkdir(r, parent: 1, name: Array("hidden".utf8), mode: 0o755, umask: 0)
        _ = try s.guest.create(r, parent: dir.nodeid, name: Array("b".utf8), mode: 0o644, flags: 0, umask: 0)
        s.host.stopListening()   // drains the queue
        let seen = recorder.seen.withLock { $0 }
        #expect(seen.contains(.contents(e.nodeid)))
        #expect(seen.contains(.entry(parent: 1, name: Array("hidden".utf8))))
        #expect(!seen.contains(.entry(parent: 1, name: Array("a".utf8))))
        #expect(!seen.contains { if case .entry(dir.nodeid, _) = $0 { return true } else { return false } })
    }
}
