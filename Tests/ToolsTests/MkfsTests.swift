import Foundation
import Glibc
import Testing
import PMFSMetadata

@Suite struct MkfsTests {
    @Test func createsPoolAndPreallocatedDataFileThatTheEngineOpens() throws {
        let s = try Scratch()
        let uuid = "0f8e3c2a-1b2c-4d5e-8f90-a1b2c3d4e5f6"
        let r = try mkfs(pool: s.path("fs.pool"), data: s.path("data.img"),
                         ["--data-size", "8M", "--label", "vm-images", "--uuid", uuid])
        #expect(r.output.contains(uuid))
        #expect(r.output.contains("vm-images"))
        #expect(r.output.contains("2048 blocks"))

        #expect(fileSize(s.path("data.img")) == 8 << 20)
        var st = stat()
        #expect(stat(s.path("data.img"), &st) == 0)
        #expect(UInt64(st.st_blocks) * 512 >= 8 << 20, "data file should be preallocated")

        let header = try #require(try DataDeviceHeader.read(from: s.path("data.img")))
        #expect(formatUUID(header.fsUUID) == uuid)
        #expect(header.blockCount == 2048 && header.blockSize == 4096)
        let store = try MetadataStore.open(poolPath: s.path("fs.pool"), dataDevice: header)
        #expect(formatUUID(store.uuid) == uuid)
        #expect(store.label == "vm-images")
        #expect(store.dataUUID == header.dataUUID)
        let stats = store.statistics()
        #expect(stats.totalBlocks == 2047)   // block 0 holds the header
        #expect(stats.freeBlocks == 2047)
        #expect(stats.poolBytes >= 64 << 20)
        _ = try store.mkdir(1, name("works"), NewInode(mode: UInt32(S_IFDIR) | 0o755))
        try store.close()
    }

    /// Preallocated blocks of a data file on ext4 are "unwritten" until written;
    /// --zero-data writes them once. (Checked with filefrag on /var/tmp; skipped
    /// where that is not ext4.)
    @Test func zeroDataLeavesNoUnwrittenExtents() throws {
        let s = try Scratch()
        let data = "/var/tmp/pmfs-zero-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).img"
        defer { unlink(data) }
        func extents() throws -> String {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/sbin/filefrag")
            p.arguments = ["-v", data]
            let out = Pipe()
            p.standardOutput = out
            try PoolDescriptors.withSpawnLock { try p.run() }
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            #expect(p.terminationStatus == 0, "filefrag: \(text)")
            return text
        }
        try mkfs(pool: s.path("a.pool"), data: data, ["--data-size", "16M", "-q"])
        let before = try extents()
        guard before.contains("type is: ef53") else { return }   // not ext4
        #expect(before.contains("unwritten"), "a preallocated file starts unwritten (else this test proves nothing)")
        try mkfs(pool: s.path("b.pool"), data: data, ["--zero-data", "--force", "-q"])
        #expect(try !extents().contains("unwritten"))
        #expect(fileSize(data) == 16 << 20)
        #expect(try DataDeviceHeader.read(from: data)?.blockCount == 4096)
    }

    @Test func quietPrintsNothingAndSizeSuffixesWork() throws {
        let s = try Scratch()
        let r = try mkfs(pool: s.path("fs.pool"), data: s.path("data.img"), ["--data-size", "1GiB", "--pool-size", "80m", "-q"])
        #expect(r.stdout.isEmpty)
        #expect(fileSize(s.path("data.img")) == 1 << 30)
        #expect(fileSize(s.path("fs.pool")) == 80 << 20)
    }

    @Test func existingDataFileIsUsedAtItsSize() throws {
        let s = try Scratch()
        let data = s.path("data.img")
        #expect(FileManager.default.createFile(atPath: data, contents: nil))
        #expect(truncate(data, 4 << 20) == 0)
        try mkfs(pool: s.path("fs.pool"), data: data, ["-q"])
        #expect(try DataDeviceHeader.read(from: data)?.blockCount == 1024)
    }

    @Test func refusesToOverwriteWithoutForce() throws {
        let s = try Scratch()
        let pool = s.path("fs.pool"), data = s.path("data.img")
        try mkfs(pool: pool, data: data, ["--data-size", "8M", "-q"])
        let first = try #require(try DataDeviceHeader.read(from: data))

        // Same data device, new pool path: the data device is refused.
        var r = try Tool.run("mkfs.pmfs", ["--pool", s.path("other.pool"), "--data", data, "--data-size", "8M"])
        expectFailure(r, tool: "mkfs.pmfs", mentioning: "already holds a pmfs file system")
        #expect(r.stderr.contains("--force"))
        #expect(!exists(s.path("other.pool")))

        // Same pool, new data file: the pool is refused, and no data file is made.
        r = try Tool.run("mkfs.pmfs", ["--pool", pool, "--data", s.path("new.img"), "--data-size", "8M"])
        expectFailure(r, tool: "mkfs.pmfs", mentioning: "already holds a pmfs file system")
        #expect(r.stderr.contains(formatUUID(first.fsUUID)))
        #expect(!exists(s.path("new.img")))

        // A file that is not a pool is not silently replaced either.
        #expect(FileManager.default.createFile(atPath: s.path("junk"), contents: Data(repeating: 7, count: 1 << 20)))
        r = try Tool.run("mkfs.pmfs", ["--pool", s.path("junk"), "--data", s.path("new.img"), "--data-size", "8M"])
        expectFailure(r, tool: "mkfs.pmfs", mentioning: "not a usable pmfs pool")

        // The refused runs changed nothing.
        let store = try MetadataStore.open(poolPath: pool, dataDevice: first, mode: .inspect)
        #expect(store.uuid == first.fsUUID)
        try store.close()
        #expect(try DataDeviceHeader.read(from: data) == first)
    }

    @Test func shrinksADataFileOnlyWithForce() throws {
        let s = try Scratch()
        let data = s.path("plain.img")
        #expect(FileManager.default.createFile(atPath: data, contents: nil))
        #expect(truncate(data, 8 << 20) == 0)
        let r = try Tool.run("mkfs.pmfs", ["--pool", s.path("a.pool"), "--data", data, "--data-size", "4M"])
        expectFailure(r, tool: "mkfs.pmfs", mentioning: "refusing to shrink")
        #expect(fileSize(data) == 8 << 20)
        #expect(!exists(s.path("a.pool")))
        try mkfs(pool: s.path("a.pool"), data: data, ["--data-size", "4M", "--force", "-q"])
        #expect(fileSize(data) == 4 << 20)
        #expect(try DataDeviceHeader.read(from: data)?.blockCount == 1024)
    }

    @Test func forceReplacesAnExistingFileSystem() throws {
        let s = try Scratch()
        let pool = s.path("fs.pool"), data = s.path("data.img")
        try mkfs(pool: pool, data: data, ["--data-size", "8M", "-q"])
        let old = try #require(try DataDeviceHeader.read(from: data))
        let refused = try Tool.run("mkfs.pmfs", ["--pool", pool, "--data", data])
        expectFailure(refused, tool: "mkfs.pmfs", mentioning: "use --force")
        let still = try MetadataStore.open(poolPath: pool, dataDevice: old, mode: .inspect)
        try still.close()

        try mkfs(pool: pool, data: data, ["--force", "--label", "second", "-q"])
        let new = try #require(try DataDeviceHeader.read(from: data))
        #expect(new.fsUUID != old.fsUUID)
        #expect(new.blockCount == old.blockCount)
        let store = try MetadataStore.open(poolPath: pool, dataDevice: new)
        #expect(store.label == "second")
        try store.close()
    }

    @Test func errorsAreOneClearLineWithExitCodeOne() throws {
        let s = try Scratch()
        let pool = s.path("fs.pool"), data = s.path("data.img")
        let cases: [(arguments: [String], message: String)] = [
            (["--pool", s.path("missing/fs.pool"), "--data", data, "--data-size", "8M"], "does not exist"),
            (["--pool", pool, "--data", s.path("missing/data.img"), "--data-size", "8M"], "does not exist"),
            (["--pool", pool, "--data", data], "does not exist (give --data-size"),
            (["--pool", pool, "--data", data, "--data-size", "32K"], "too small"),
            (["--pool", pool, "--data", data, "--data-size", "8M", "--uuid", "not-a-uuid"], "bad UUID"),
            (["--pool", pool, "--data", data, "--data-size", "8M", "--uuid", "0f8e3c2a1b2c4d5e8f90a1b2c3d4e5"], "bad UUID"),
            (["--pool", pool, "--data", data, "--data-size", "12Q"], "bad size '12Q'"),
            (["--pool", pool, "--data", data, "--data-size", "0"], "bad size '0'"),
            (["--pool", pool, "--data", data, "--data-size", "8M", "--pool-size", "lots"], "bad size 'lots'"),
            (["--pool", pool, "--data", data, "--data-size", "8M", "--pool-size", "9M"], "too small"),
            (["--pool", pool, "--data", data, "--data-size", "8M", "--label", String(repeating: "x", count: 64)], "at most 63 bytes"),
            (["--pool", s.directory, "--data", data, "--data-size", "8M"], "not a regular file"),
            (["--pool", pool, "--data", s.directory, "--data-size", "8M"], "is a directory"),
            (["--pool", data, "--data", s.directory + "/./data.img", "--data-size", "8M"], "different files"),
        ]
        for c in cases {
            let r = try Tool.run("mkfs.pmfs", c.arguments)
            expectFailure(r, tool: "mkfs.pmfs", mentioning: c.message)
            // A refused run leaves nothing behind.
            #expect(!exists(pool), "\(c.arguments) left a pool")
            #expect(!exists(data), "\(c.arguments) left a data file")
        }
    }

    @Test func dataDeviceOfAnotherFileSystemIsRefused() throws {
        let s = try Scratch()
        try mkfs(pool: s.path("a.pool"), data: s.path("a.img"), ["--data-size", "8M", "-q"])
        try mkfs(pool: s.path("b.pool"), data: s.path("b.img"), ["--data-size", "8M", "-q"])
        let b = try #require(try DataDeviceHeader.read(from: s.path("b.img")))
        #expect {
            _ = try MetadataStore.open(poolPath: s.path("a.pool"), dataDevice: b)
        } throws: { error in
            guard case .dataDeviceMismatch? = error as? PoolError else { return false }
            return true
        }
        // Same fs UUID but another device (as after copying the pool): still refused.
        let a = try #require(try DataDeviceHeader.read(from: s.path("a.img")))
        var forged = a
        forged.dataUUID = b.dataUUID
        #expect(throws: PoolError.self) { _ = try MetadataStore.open(poolPath: s.path("a.pool"), dataDevice: forged) }
        // And the matching one opens.
        try MetadataStore.open(poolPath: s.path("a.pool"), dataDevice: a).close()
    }
}
