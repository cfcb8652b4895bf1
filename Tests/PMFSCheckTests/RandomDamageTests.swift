import CPMDK
import Glibc
import PMFSCheck
import Testing
@testable import PMFSMetadata

/// Random damage: words overwritten inside pmfs objects (never the libpmemobj
/// heap metadata, which fsck.pmfs does not own). The checker must not crash,
/// -n must not write, -y must leave a pool that checks clean and that the
/// engine can open. Failing seeds are printed; PMFS_FSCK_SEED=N replays one.
@Suite struct RandomDamageTests {
    static var seeds: [UInt64] {
        if let s = getenv("PMFS_FSCK_SEED"), let seed = UInt64(String(cString: s)) { return [seed] }
        if let s = getenv("PMFS_FSCK_RANDOM_RUNS"), let n = UInt64(String(cString: s)), n > 0 { return Array(1...n) }
        return Array(1...12)
    }

    @Test(arguments: seeds)
    func survivesRandomDamage(_ seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let f = try CheckFixture(name: "random\(seed)")
        var log: [String] = []
        try f.withRawPool { raw in
            var objects: [(off: UInt64, type: UInt64, size: Int)] = []
            var off = cpmdk_first(raw.pool.handle)
            while off != 0 {
                objects.append((off, cpmdk_type_num(raw.pool.handle, off), cpmdk_usable_size(raw.pool.handle, off)))
                off = cpmdk_next(raw.pool.handle, off)
            }
            let valid = objects.map(\.off)
            // The superblock (the root object, which iteration skips), but not its magic.
            objects.append((raw.pool.rootOffset + 8, 1, MemoryLayout<pmfs_superblock>.size - 8))
            for _ in 0..<Int(rng.next() % 8 + 1) {
                let o = objects[Int(rng.next() % UInt64(objects.count))]
                // Inode chunks and bitmaps are large and mostly zero: aim at the live part.
                let span = min(o.size, o.type == 3 ? 64 * 256 : 2048) / 8
                let at = o.off + 8 * (rng.next() % UInt64(span))
                let value: UInt64
                switch rng.next() % 4 {
                case 0: value = rng.next()
                case 1: value = rng.next() % 16
                case 2: value = valid[Int(rng.next() % UInt64(valid.count))]
                default: value = 0
                }
                let p: UnsafeMutablePointer<UInt64> = try raw.pool.pointer(at)
                log.append("\(typeName(o.type)) object \(o.off) +\(at - o.off): \(p.pointee) -> \(value)")
                raw.poke(p, value)
            }
        }
        let damaged = f.contents()
        let check = try f.check(repair: false)
        #expect(f.contents() == damaged, "seed \(seed): -n changed the pool")
        if check.exitCode == 8 {
            // A superblock field that stops the check (version, features): nothing to repair.
            #expect(try f.check(repair: true).exitCode == 8)
            #expect(f.contents() == damaged, "seed \(seed): a failed check changed the pool")
            return
        }
        let repair = try f.check(repair: true)
        let again = try f.check(repair: false)
        let detail = "seed \(seed)\ndamage: \(log)\n-y: \(repair.problems.map { "\($0.code): \($0.message) \($0.fixed)" })\nafter: \(again.problems.map { "\($0.code): \($0.message)" })"
        #expect(check.exitCode == 0 || check.exitCode == 4, "\(detail)")
        #expect(repair.exitCode == 0 || repair.exitCode == 1, "\(detail)")
        #expect(again.exitCode == 0, "\(detail)")
        if getenv("PMFS_FSCK_TEST_VERBOSE") != nil { print("== \(detail)") }
        guard again.exitCode == 0 else { return }
        let store = try MetadataStore.open(poolPath: f.path)
        _ = try walkTree(store)
        _ = try store.create(1, FileName("after-random-repair"), NewInode(mode: UInt32(S_IFREG) | 0o644))
        try store.close()
        #expect(try f.check(repair: false).exitCode == 0, "\(detail)")
    }

}


func typeName(_ t: UInt64) -> String {
    switch t {
    case 1: return "superblock"
    case 2: return "inode-table"
    case 3: return "inode-chunk"
    case 4: return "bitmap"
    case 5: return "directory"
    case 6: return "dirent-chunk"
    case 7: return "bucket-chunk"
    case 8: return "name"
    case 9: return "symlink"
    case 10: return "xattrs"
    case 11: return "extent-node"
    default: return "unknown-\(t)"
    }
}
