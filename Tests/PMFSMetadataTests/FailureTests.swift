import Glibc
import SystemPackage
import Testing
@testable import PMFSMetadata

@Suite struct FailureTests {
    @Test func dataDeviceFullIsENOSPCAndChangesNothing() throws {
        let t = try TestPool(dataBlocks: 100)
        let f = try t.store.create(root, name("f"), file())
        try t.store.allocateBlocks(f.ino, start: 0, count: 90)
        let before = try t.store.mapBlocks(f.ino, start: 0, count: 200)
        #expect(throws: Errno.noSpace) { try t.store.allocateBlocks(f.ino, start: 100, count: 20) }
        #expect(try t.store.mapBlocks(f.ino, start: 0, count: 200) == before)
        #expect(t.store.statistics().freeBlocks == 9)
        // Space comes back on delete.
        try t.store.unlink(root, name("f"))
        #expect(t.store.statistics().freeBlocks == 99)
        let g = try t.store.create(root, name("g"), file())
        try t.store.allocateBlocks(g.ino, start: 0, count: 99)
    }

    @Test func poolFullIsENOSPCWithPoolIntact() throws {
        let t = try TestPool(dataBlocks: 64, poolSize: 16 << 20)
        var created: [String] = []
        var failure: Error? = nil
        for i in 0..<1_000_000 {
            do {
                let n = "file-with-a-name-long-enough-to-need-a-blob-\(i)"
                let d = try t.store.mkdir(root, name(n), dir())
                try t.store.setxattr(d.ino, Array("user.pad".utf8), [UInt8](repeating: 1, count: 2000))
                created.append(n)
            } catch {
                failure = error
                break
            }
        }
        #expect(failure as? Errno == .noSpace)
        #expect(created.count > 100)
        // Everything created before is intact and the pool still works after a reopen.
        try t.reopen()
        #expect(try t.store.names(root, page: 1000).count == created.count || (try t.store.names(root, page: 1000).count == created.count + 1))
        for n in created.suffix(50) { #expect(try t.store.lookup(root, name(n)).type == .directory) }
        try t.store.rmdir(root, name(created[0]))
        _ = try t.store.create(root, name("after"), file())
    }

    @Test func wrongDataDeviceIsRefused() throws {
        let t = try TestPool()
        let path = t.path
        try t.store.close()
        let good = DataDeviceHeader(blockSize: 4096, blockCount: 1 << 16, fsUUID: t.store.uuid, dataUUID: t.store.dataUUID)
        let otherFS = DataDeviceHeader(blockSize: 4096, blockCount: 1 << 16, fsUUID: randomUUID(), dataUUID: t.store.dataUUID)
        let otherSize = DataDeviceHeader(blockSize: 4096, blockCount: 1 << 15, fsUUID: t.store.uuid, dataUUID: t.store.dataUUID)
        #expect(throws: PoolError.self) { try MetadataStore.open(poolPath: path, dataDevice: otherFS) }
        #expect(throws: PoolError.self) { try MetadataStore.open(poolPath: path, dataDevice: otherSize) }
        t.store = try MetadataStore.open(poolPath: path, dataDevice: good)
    }

    @Test func headerRoundTripsThroughAFile() throws {
        let path = "/dev/shm/pmfs-test-header-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(path) }
        let fd = open(path, O_CREAT | O_RDWR, 0o600)
        ftruncate(fd, 1 << 20)
        close(fd)
        #expect(try DataDeviceHeader.read(from: path) == nil)
        let h = DataDeviceHeader(blockSize: 4096, blockCount: 256, fsUUID: randomUUID(), dataUUID: randomUUID())
        try h.write(to: path)
        #expect(try DataDeviceHeader.read(from: path) == h)
        #expect(try DataDeviceHeader.deviceSize(path: path) == 1 << 20)
    }

    @Test func openingGarbageIsAClearError() throws {
        let path = "/dev/shm/pmfs-test-garbage-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(path) }
        let fd = open(path, O_CREAT | O_RDWR, 0o600)
        var junk = [UInt8](repeating: 0xAB, count: 16 << 20)
        _ = write(fd, &junk, junk.count)
        close(fd)
        #expect(throws: PoolError.self) { try MetadataStore.open(poolPath: path) }
        #expect(throws: PoolError.self) { try MetadataStore.open(poolPath: "/dev/shm/does-not-exist-\(getpid())") }
    }

    @Test func formatRefusesAnExistingPool() throws {
        let t = try TestPool()
        #expect(throws: PoolError.alreadyFormatted(path: t.path)) {
            try MetadataStore.format(poolPath: t.path, options: .init(poolSize: 64 << 20, dataBlocks: 1000))
        }
        #expect(throws: PoolError.self) {
            try MetadataStore.format(poolPath: "/dev/shm/pmfs-small-\(getpid())", options: .init(poolSize: 1 << 20, dataBlocks: 1000))
        }
    }
}
