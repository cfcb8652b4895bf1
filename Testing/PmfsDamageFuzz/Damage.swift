import CPMDK
import PMFSMetadata

extension SplitMix64 {
    /// The damage fuzzer's generator for `seed` (scrambled first, as its seeds always were).
    init(damageSeed seed: UInt64) { self.init(seed: seed &* 0x2545_F491_4F6C_DD1D) }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}

/// A field of a persistent structure: byte offset in it and width.
struct Field {
    var name: String
    var offset: Int
    var width: Int   // 1, 4 or 8 bytes
    var isReference = false   // holds a pool offset
}

func field<S, F>(_ name: String, _ path: KeyPath<S, F>, reference: Bool = false) -> Field {
    Field(name: name, offset: MemoryLayout<S>.offset(of: path)!, width: MemoryLayout<F>.size, isReference: reference)
}

/// The persistent structures of a pool, found by walking its objects, and the
/// damage the fuzzer does to them: structure-aware (one field of an inode,
/// directory entry, directory header, extent node, the space map or the inode
/// table set to a boundary value, a huge offset or a pointer to itself) or
/// random (a word anywhere in a pmfs object). libpmemobj's own heap metadata is
/// never touched: pmfs does not own it and fsck.pmfs cannot mend it.
struct PoolDamager {
    let pool: PersistentPool
    var objects: [(offset: UInt64, type: UInt64, size: Int)] = []
    var inodes: [UInt64] = []          // offsets of live inodes
    var dirents: [UInt64] = []         // offsets of live directory entries
    var extentNodes: [UInt64] = []
    var directories: [UInt64] = []
    var log: [String] = []

    init(pool: PersistentPool) throws {
        self.pool = pool
        var off = cpmdk_first(pool.handle)
        while off != 0 {
            let type = cpmdk_type_num(pool.handle, off), size = cpmdk_usable_size(pool.handle, off)
            objects.append((off, type, size))
            switch type {
            case UInt64(PMFS_T_INODE_CHUNK.rawValue):
                var free = 0
                for i in 0..<(size / 256) {
                    let p: UnsafeMutablePointer<pmfs_inode> = try pool.pointer(off + UInt64(i * 256))
                    // Live inodes, and a few free slots (the next creates reuse them).
                    if p.pointee.mode != 0 { inodes.append(off + UInt64(i * 256)) } else if free < 3 && i > 0 {
                        inodes.append(off + UInt64(i * 256))
                        free += 1
                    }
                }
            case UInt64(PMFS_T_DIRENT_CHUNK.rawValue):
                for i in 0..<(size / 64) {
                    let p: UnsafeMutablePointer<pmfs_dirent> = try pool.pointer(off + UInt64(i * 64))
                    if p.pointee.ino != 0 { dirents.append(off + UInt64(i * 64)) }
                }
            case UInt64(PMFS_T_EXTENT_NODE.rawValue): extentNodes.append(off)
            case UInt64(PMFS_T_DIRECTORY.rawValue): directories.append(off)
            default: break
            }
            off = cpmdk_next(pool.handle, off)
        }
    }

    static let inodeFields: [Field] = [
        field("mode", \pmfs_inode.mode), field("nlink", \pmfs_inode.nlink), field("size", \pmfs_inode.size),
        field("generation", \pmfs_inode.generation),
        field("blocks", \pmfs_inode.blocks), field("parent", \pmfs_inode.parent), field("flags", \pmfs_inode.flags),
        field("content_off", \pmfs_inode.content_off, reference: true), field("xattr_off", \pmfs_inode.xattr_off, reference: true),
        field("orphan_next", \pmfs_inode.orphan_next), field("orphan_prev", \pmfs_inode.orphan_prev),
        field("extent_count", \pmfs_inode.extent_count), field("atime.sec", \pmfs_inode.atime.sec),
        field("mtime.nsec", \pmfs_inode.mtime.nsec),
    ]
    static let direntFields: [Field] = [
        field("ino", \pmfs_dirent.ino), field("next", \pmfs_dirent.next), field("hash", \pmfs_dirent.hash),
        field("type", \pmfs_dirent.type), field("name_length", \pmfs_dirent.name_length),
        Field(name: "name_off", offset: MemoryLayout<pmfs_dirent>.offset(of: \.name)!, width: 8, isReference: true),
    ]
    static let directoryFields: [Field] = {
        var f = [field("entry_count", \pmfs_directory.entry_count), field("slot_count", \pmfs_directory.slot_count),
                 field("free_slot", \pmfs_directory.free_slot), field("bucket_count", \pmfs_directory.bucket_count),
                 field("level", \pmfs_directory.level), field("split", \pmfs_directory.split),
                 field("subdir_count", \pmfs_directory.subdir_count)]
        let slots = MemoryLayout<pmfs_directory>.offset(of: \.slot_chunk_off)!, buckets = MemoryLayout<pmfs_directory>.offset(of: \.bucket_chunk_off)!
        for k in 0..<4 {
            f.append(Field(name: "slot_chunk_off[\(k)]", offset: slots + 8 * k, width: 8, isReference: true))
            f.append(Field(name: "bucket_chunk_off[\(k)]", offset: buckets + 8 * k, width: 8, isReference: true))
        }
        return f
    }()
    static let extentNodeFields: [Field] = {
        var f = [field("key_count", \pmfs_extent_node.key_count), field("is_leaf", \pmfs_extent_node.is_leaf)]
        let keys = MemoryLayout<pmfs_extent_node>.offset(of: \.keys)!, u = MemoryLayout<pmfs_extent_node>.offset(of: \.u)!
        for i in [0, 1, 2, 28, 29] {
            f.append(Field(name: "keys[\(i)]", offset: keys + 8 * i, width: 8))
            // As a leaf: extent i (device block, length); as an inner node: children.
            f.append(Field(name: "extents[\(i)].device_block", offset: u + 16 * i, width: 8, isReference: true))
            f.append(Field(name: "extents[\(i)].length", offset: u + 16 * i + 8, width: 4))
            f.append(Field(name: "extents[\(i)].flags", offset: u + 16 * i + 12, width: 4))
            f.append(Field(name: "children[\(i)]", offset: u + 8 * i, width: 8, isReference: true))
        }
        return f
    }()
    static let bitmapFields: [Field] = [
        field("block_count", \pmfs_space_bitmap.block_count), field("reserved_blocks", \pmfs_space_bitmap.reserved_blocks),
        field("word_count", \pmfs_space_bitmap.word_count),
        Field(name: "words[0]", offset: 32, width: 8), Field(name: "words[1]", offset: 40, width: 8),
    ]
    static let tableFields: [Field] = [
        field("chunk_count", \pmfs_inode_table.chunk_count),
        Field(name: "chunk_off[0]", offset: 8, width: 8, isReference: true),
        Field(name: "chunk_off[1]", offset: 16, width: 8, isReference: true),
    ]
    static let superblockFields: [Field] = [
        field("orphan_head", \pmfs_superblock.orphan_head), field("data_blocks", \pmfs_superblock.data_blocks),
        field("inode_table_off", \pmfs_superblock.inode_table_off, reference: true),
        field("space_bitmap_off", \pmfs_superblock.space_bitmap_off, reference: true),
        field("reserve_off", \pmfs_superblock.reserve_off, reference: true), field("state", \pmfs_superblock.state),
    ]

    /// A value for `f` of the structure at `base`: a boundary of its width, a
    /// huge or edge-of-pool offset, a pointer to the structure itself or to
    /// another object, a small number, or random bits.
    mutating func value(for f: Field, base: UInt64, _ rng: inout SplitMix64) -> UInt64 {
        let max: UInt64 = f.width == 8 ? .max : (1 << UInt64(f.width * 8)) - 1
        var choices: [UInt64] = [0, 1, max, max - 1, max / 2 + 1, max / 2, rng.next() % 64, rng.next() & max]
        if f.width == 8 {
            // 8192 and 1 MiB: inside the pool, before libpmemobj's heap (its lanes).
            choices += [pool.size - 8, pool.size, pool.size - 64, UInt64.max - 7, 1 << 62, base, base + 8, 8192, 1 << 20,
                        rng.pick(objects).offset, rng.pick(objects).offset + 16, UInt64(Fixture.dataBlocks), UInt64(Fixture.dataBlocks) - 1]
            if f.isReference { choices += [base, rng.pick(objects).offset, rng.pick(objects).offset] }
        }
        return rng.pick(choices)
    }

    mutating func poke(_ at: UInt64, width: Int, _ value: UInt64, _ what: String) throws {
        let raw = try pool.raw(at, length: width)
        var v = value
        let old: UInt64 = { var o: UInt64 = 0; memcpyShim(&o, raw, width); return o }()
        withUnsafeBytes(of: &v) { raw.copyMemory(from: $0.baseAddress!, byteCount: width) }
        pool.persist(raw, width)
        log.append("\(what): \(old) -> \(value)")
    }

    /// One structure-aware change.
    mutating func damageStructure(_ rng: inout SplitMix64) throws {
        let sb = pool.rootOffset
        let sbp = pool.superblock.pointee
        var targets: [(String, [UInt64], [Field])] = [
            ("inode", inodes, Self.inodeFields), ("dirent", dirents, Self.direntFields),
            ("directory", directories, Self.directoryFields), ("extent-node", extentNodes, Self.extentNodeFields),
            ("space-bitmap", [sbp.space_bitmap_off], Self.bitmapFields), ("inode-table", [sbp.inode_table_off], Self.tableFields),
        ]
        // Whole-pool structures less often: most damage should be to one file.
        if rng.below(4) == 0 { targets.append(("superblock", [sb], Self.superblockFields)) }
        // An earlier change of this seed may have pointed a header elsewhere: only offsets in the pool.
        let (kind, bases, fields) = rng.pick(targets.map { ($0.0, $0.1.filter { $0 >= 4096 && $0 < pool.size }, $0.2) }.filter { !$0.1.isEmpty })
        let base = rng.pick(bases), f = rng.pick(fields)
        try poke(base + UInt64(f.offset), width: f.width, value(for: f, base: base, &rng), "\(kind)@\(base).\(f.name)")
    }

    /// One random word in a random pmfs object (aimed at the live part of large ones).
    mutating func damageRandomWord(_ rng: inout SplitMix64) throws {
        let o = rng.pick(objects)
        let span = Swift.max(1, Swift.min(o.size, o.type == UInt64(PMFS_T_INODE_CHUNK.rawValue) ? 64 * 256 : 2048) / 8)
        let at = o.offset + 8 * UInt64(rng.below(span))
        let v: UInt64 = rng.below(3) == 0 ? rng.next() : (rng.below(2) == 0 ? rng.next() % 16 : rng.pick(objects).offset)
        try poke(at, width: rng.below(4) == 0 ? 1 : 8, v, "random \(typeName(o.type))@\(o.offset)+\(at - o.offset)")
    }

    /// Damage for one seed: one to four changes, mostly structure-aware.
    mutating func damage(seed: UInt64) throws {
        var rng = SplitMix64(damageSeed: seed)
        for _ in 0..<(1 + rng.below(4)) {
            // A change that lands outside the pool (a header pointed away by an
            // earlier one) is skipped, not the end of the run.
            do {
                if rng.below(10) < 7 { try damageStructure(&rng) } else { try damageRandomWord(&rng) }
            } catch let e as PoolError { log.append("skipped: \(e)") }
        }
    }
}

@inline(__always)
func memcpyShim(_ to: UnsafeMutableRawPointer, _ from: UnsafeRawPointer, _ n: Int) { to.copyMemory(from: from, byteCount: n) }

func typeName(_ t: UInt64) -> String {
    ["?", "superblock", "inode-table", "inode-chunk", "bitmap", "directory", "dirent-chunk", "bucket-chunk",
     "name", "symlink", "xattrs", "extent-node", "reserve"][Int(t < 13 ? t : 0)]
}
