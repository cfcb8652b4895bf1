import Foundation
import Glibc
@testable import PMFSMetadata

/// A fresh pool on /dev/shm (emulated PM: PMEM_IS_PMEM_FORCE=1), removed on deinit.
final class TestPool {
    let path: String
    var store: MetadataStore!

    init(dataBlocks: UInt64 = 1 << 16, poolSize: UInt64 = 64 << 20, name: String = #function) throws {
        setenv("PMEM_IS_PMEM_FORCE", "1", 1)
        setenv("PMEMOBJ_CONF", "sds.at_create=0", 1)
        path = "/dev/shm/pmfs-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).pool"
        store = try MetadataStore.format(poolPath: path, options: .init(poolSize: poolSize, dataBlocks: dataBlocks))
    }

    /// Closes and reopens the pool, as after a clean restart.
    func reopen() throws {
        try store.close()
        store = try MetadataStore.open(poolPath: path)
    }

    deinit {
        try? store?.close()
        unlink(path)
    }
}

func name(_ s: String) -> FileName { try! FileName(s) }

let root: UInt64 = 1

func file(_ mode: UInt32 = 0o644) -> NewInode { NewInode(mode: UInt32(S_IFREG) | mode, uid: 1000, gid: 1000) }
func dir(_ mode: UInt32 = 0o755) -> NewInode { NewInode(mode: UInt32(S_IFDIR) | mode, uid: 1000, gid: 1000) }

extension MetadataStore {
    /// Every name in a directory (without . and ..), by listing in small pages.
    func names(_ ino: UInt64, page: Int = 7) throws -> [String] {
        var cookie: UInt64 = 0
        var out: [String] = []
        while true {
            let batch = try readdir(ino, cookie: cookie, limit: page)
            if batch.isEmpty { break }
            for e in batch where e.name != [0x2E] && e.name != [0x2E, 0x2E] { out.append(String(decoding: e.name, as: UTF8.self)) }
            cookie = batch.last!.nextCookie
        }
        return out
    }
}
