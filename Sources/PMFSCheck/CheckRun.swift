import CPMDK
import Glibc
import PMFSMetadata

/// One allocated pmemobj object, as pass 0 found it by iteration.
struct PoolObject {
    var type: UInt64
    var size: Int
    /// Who references it: nil = nobody (yet), 0 = the file system itself, else an inode.
    var owner: UInt64?
}

/// Why a reference to an object is not acceptable.
enum ReferenceProblem: CustomStringConvertible {
    case notAllocated(UInt64)
    case wrongType(UInt64, found: UInt64, expected: UInt64)
    case tooSmall(UInt64, size: Int, needed: Int)
    case shared(UInt64, owner: UInt64)

    var description: String {
        switch self {
        case .notAllocated(let off): return off == 0 ? "is missing (offset 0)" : "offset \(off) is not an allocated object"
        case .wrongType(let off, let found, let expected):
            return "object at \(off) is a \(typeName(found)), not a \(typeName(expected))"
        case .tooSmall(let off, let size, let needed): return "object at \(off) has \(size) bytes, needs \(needed)"
        case .shared(let off, let owner):
            return "object at \(off) already belongs to \(owner == 0 ? "the file system" : "inode \(owner)")"
        }
    }
}

/// A file extent the checker keeps (valid and not shared).
struct Extent {
    var fileBlock: UInt64
    var deviceBlock: UInt64
    var length: UInt64
    var flags: UInt32
}

/// What the checker knows of one inode number. Later passes read it instead of
/// the pool, and it shows the file system as it is after the fixes found so far
/// (with -n, as it would be): so -n and -y take the same path through the passes.
struct InodeInfo {
    /// nil = free (or cleared by a fix).
    var type: FileType?
    var nlink: UInt32 = 0
    /// Directories: the index object (0 = treat as empty).
    var directoryOffset: UInt64 = 0
    /// Directory entries naming this inode.
    var references: UInt32 = 0
    /// On the (repaired) orphan list.
    var orphan = false
    var flags: UInt32 = 0
}

/// A directory entry that names a directory: where it lives.
struct EntryLocation: Equatable {
    var directory: UInt64
    var slot: UInt64
}

/// The state of one check: the pool, what is known about it, and the problems.
final class CheckRun {
    let pool: PersistentPool
    let options: CheckOptions
    var problems: [CheckProblem] = []
    /// Set when the check cannot go on (exit 8).
    var fatal: String?
    var skippedClean = false

    // Pass 0
    var objects: [UInt64: PoolObject] = [:]
    var sb: UnsafeMutablePointer<pmfs_superblock> { pool.superblock }
    var seed: UInt64 = 0
    var dataBlocks: UInt64 = 0
    var reservedBlocks: UInt64 = 1
    var table: UnsafeMutablePointer<pmfs_inode_table>!
    var bitmap: UnsafeMutablePointer<pmfs_space_bitmap>!
    var bitmapWords: UnsafeMutablePointer<UInt64>!
    var wordCount = 0

    // Pass 1
    /// Inode chunks that can be read (nil: damaged, its inodes count as free).
    var chunks: [UnsafeMutablePointer<pmfs_inode>?] = []
    var inodes: [InodeInfo] = []
    /// Kept extents of every regular file.
    var extents: [UInt64: [Extent]] = [:]
    /// Extent-tree nodes claimed per file, and problems whose fix is a rebuild.
    var extentNodes: [UInt64: [UInt64]] = [:]
    var rebuildProblems: [UInt64: [Int]] = [:]

    // Pass 2
    /// Entries naming each directory, and the directories in each directory.
    var parentEntries: [UInt64: [EntryLocation]] = [:]
    var childDirectories: [UInt64: [UInt64]] = [:]
    var entryCounts: [UInt64: UInt64] = [:]
    /// The entry "lost+found" in the root, if it names a directory.
    var lostFound: UInt64?
    /// Directories whose index is consistent (after repair), so the engine's
    /// DirectoryIndex can change them.
    var indexUsable = Set<UInt64>()

    // Pass 3: where repairs linked inodes into /lost+found.
    var reconnectedTo: [UInt64: UInt64] = [:]
    var reconnectedSlot: [UInt64: UInt64] = [:]

    // Results
    var liveInodes: UInt64 = 0
    var directoryCount: UInt64 = 0
    var usedBlocks: UInt64 = 0

    init(pool: PersistentPool, options: CheckOptions) {
        self.pool = pool
        self.options = options
    }

    var capacity: UInt64 { UInt64(inodes.count) }

    func progress(_ line: String) { options.progress?(line) }

    // MARK: problems and fixes

    /// Records a problem (not fixed yet) and returns its index.
    @discardableResult
    func found(_ code: ProblemCode, _ message: String) -> Int {
        problems.append(CheckProblem(code: code.rawValue, message: message, fixed: false, fix: code.fix))
        return problems.count - 1
    }

    /// With `repair`, applies one fix for the problems at `indices`; they count as
    /// fixed only if it succeeds. Returns whether it was applied.
    @discardableResult
    func fix(_ indices: [Int], _ body: () throws -> Void) -> Bool {
        guard options.repair, !indices.isEmpty else { return false }
        do {
            try body()
            for i in indices { problems[i].fixed = true }
            return true
        } catch {
            for i in indices { problems[i].message += " (repair failed: \(error))" }
            return false
        }
    }

    /// A problem with its own fix.
    @discardableResult
    func found(_ code: ProblemCode, _ message: String, fix body: () throws -> Void) -> Bool {
        fix([found(code, message)], body)
    }

    /// Runs `body` in a pmemobj transaction.
    func transaction(_ body: (Transaction) throws -> Void) throws {
        try pool.transaction { tx in try body(tx) }
    }

    /// Rewrites one persistent value in a transaction.
    func update<T>(_ p: UnsafeMutablePointer<T>, _ body: (inout T) -> Void) throws {
        try transaction { tx in
            try tx.snapshot(p)
            body(&p.pointee)
        }
    }

    // MARK: objects

    /// Checks that `off` is an allocated object of `type` holding at least `minSize` bytes.
    func validate(_ off: UInt64, _ type: pmfs_type_num, minSize: Int) -> ReferenceProblem? {
        guard let o = objects[off] else { return .notAllocated(off) }
        guard o.type == UInt64(type.rawValue) else { return .wrongType(off, found: o.type, expected: UInt64(type.rawValue)) }
        guard o.size >= minSize else { return .tooSmall(off, size: o.size, needed: minSize) }
        return nil
    }

    /// As `validate`, and records `owner` as the object's only referrer.
    func claim(_ off: UInt64, _ type: pmfs_type_num, minSize: Int, owner: UInt64) -> ReferenceProblem? {
        if let p = validate(off, type, minSize: minSize) { return p }
        if let o = objects[off]?.owner { return .shared(off, owner: o) }
        objects[off]?.owner = owner
        return nil
    }

    /// Forgets a claim: the object is no longer referenced (pass 6 frees it).
    func unclaim(_ off: UInt64) {
        if objects[off] != nil { objects[off]?.owner = nil }
    }

    // MARK: inodes

    func inode(_ ino: UInt64) -> UnsafeMutablePointer<pmfs_inode>? {
        let c = Int(ino / UInt64(PMFS_INODES_PER_CHUNK))
        guard c < chunks.count, let base = chunks[c] else { return nil }
        return base + Int(ino % UInt64(PMFS_INODES_PER_CHUNK))
    }

    func isLive(_ ino: UInt64) -> Bool { ino < capacity && inodes[Int(ino)].type != nil }

    func describe(_ ino: UInt64) -> String {
        guard ino < capacity, let t = inodes[Int(ino)].type else { return "inode \(ino)" }
        let name: String
        switch t {
        case .directory: name = "directory"
        case .regular: name = "file"
        case .symbolicLink: name = "symlink"
        case .fifo: name = "fifo"
        case .socket: name = "socket"
        case .characterDevice: name = "char device"
        case .blockDevice: name = "block device"
        case .unknown: name = "inode"
        }
        return "\(name) \(ino)"
    }

    /// Clears a live inode slot (keeping its generation) in `tx`. Its objects are
    /// left for pass 6, which frees whatever nothing references.
    func clearInode(_ p: UnsafeMutablePointer<pmfs_inode>, _ tx: Transaction) throws {
        try tx.snapshot(p)
        let generation = p.pointee.generation
        p.pointee = pmfs_inode()
        p.pointee.generation = generation
    }

    /// Unclaims every object an inode's fields reference (before clearing it).
    func releaseClaims(of ino: UInt64) {
        for off in extentNodes[ino] ?? [] { unclaim(off) }
        extentNodes[ino] = nil
        extents[ino] = nil
        for (off, o) in objects where o.owner == ino { unclaim(off) }
    }
}
