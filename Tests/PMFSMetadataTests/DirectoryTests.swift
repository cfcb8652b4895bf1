import Glibc
import SystemPackage
import Testing
@testable import PMFSMetadata

@Suite struct DirectoryTests {
    @Test func geometricChunksCoverEveryIndexOnce() {
        var expected = (chunk: 0, offset: 0)
        for i in UInt64(0)..<10_000 {
            let c = geometricChunk(i)
            #expect(c.chunk == expected.chunk && c.offset == expected.offset)
            expected.offset += 1
            if expected.offset == geometricChunkSize(expected.chunk) { expected = (expected.chunk + 1, 0) }
        }
    }

    @Test func manyEntriesSplitBucketsAndStayFindable() throws {
        let t = try TestPool(poolSize: 256 << 20)
        let d = try t.store.mkdir(root, name("big"), dir())
        let count = 20_000
        var inos: [UInt64] = []
        for i in 0..<count {
            // Mix short (inline) and long (blob) names.
            let n = i % 10 == 0 ? "entry-with-a-rather-long-name-to-force-a-blob-\(i)" : "e\(i)"
            inos.append(try t.store.create(d.ino, name(n), file()).ino)
        }
        let index = try t.store.directory(try t.store.inodes.inode(d.ino))
        #expect(index.entryCount == UInt64(count))
        #expect(index.dir.pointee.bucket_count > 16)
        for i in stride(from: 0, to: count, by: 7) {
            let n = i % 10 == 0 ? "entry-with-a-rather-long-name-to-force-a-blob-\(i)" : "e\(i)"
            #expect(try t.store.lookup(d.ino, name(n)).ino == inos[i])
        }
        #expect(try t.store.names(d.ino, page: 500).count == count)
        // Remove every other entry, then everything is still consistent.
        for i in stride(from: 0, to: count, by: 2) {
            let n = i % 10 == 0 ? "entry-with-a-rather-long-name-to-force-a-blob-\(i)" : "e\(i)"
            try t.store.unlink(d.ino, name(n))
        }
        #expect(try t.store.names(d.ino, page: 1000).count == count / 2)
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.lookup(d.ino, name("e2")) }
        #expect(try t.store.lookup(d.ino, name("e3")).ino == inos[3])
        try t.reopen()
        #expect(try t.store.lookup(d.ino, name("e9999")).ino == inos[9999])
    }

    /// An entry present during a whole listing is returned exactly once, however
    /// the directory changes between pages.
    @Test func readdirCookiesSurviveChanges() throws {
        let t = try TestPool()
        let d = try t.store.mkdir(root, name("d"), dir())
        for i in 0..<300 { _ = try t.store.create(d.ino, name("stable\(i)"), file()) }
        for i in 0..<300 { _ = try t.store.create(d.ino, name("churn\(i)"), file()) }
        var seen: [String: Int] = [:]
        var cookie: UInt64 = 0
        var round = 0
        while true {
            let batch = try t.store.readdir(d.ino, cookie: cookie, limit: 13)
            if batch.isEmpty { break }
            for e in batch { seen[String(decoding: e.name, as: UTF8.self), default: 0] += 1 }
            cookie = batch.last!.nextCookie
            // Between pages: delete some churn entries, add new ones (reusing slots).
            for k in 0..<5 {
                let victim = "churn\(round * 5 + k)"
                if (try? t.store.lookup(d.ino, name(victim))) != nil { try t.store.unlink(d.ino, name(victim)) }
                _ = try t.store.create(d.ino, name("new\(round)-\(k)"), file())
            }
            round += 1
        }
        for i in 0..<300 { #expect(seen["stable\(i)"] == 1, "stable\(i) seen \(seen["stable\(i)"] ?? 0) times") }
        #expect(seen.values.allSatisfy { $0 == 1 })
        #expect(seen["."] == 1 && seen[".."] == 1)
    }

    @Test func readdirReportsTypes() throws {
        let t = try TestPool()
        _ = try t.store.mkdir(root, name("d"), dir())
        _ = try t.store.create(root, name("f"), file())
        _ = try t.store.symlink(root, name("l"), target: Array("f".utf8), uid: 0, gid: 0)
        let types = Dictionary(uniqueKeysWithValues: try t.store.readdir(root, cookie: 2).map { (String(decoding: $0.name, as: UTF8.self), $0.type) })
        #expect(types == ["d": .directory, "f": .regular, "l": .symbolicLink])
    }
}
