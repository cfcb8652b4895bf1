import ArgumentParser
import PMFSControl
import PMFSMetadata

// MARK: du

struct Du: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the data blocks of a tree or file: mapped, exclusive to it, shared with the rest.",
        discussion: """
            mapped: the device blocks that the regular files in the tree map (holes do not count; \
            unwritten, fallocated blocks do). A hard-linked file counts once, and a block mapped \
            twice (a file cloned into itself) counts once.

            exclusive: blocks whose every reference comes from inside the tree, which is the \
            space that deleting the tree would free. A reference is one extent mapping the block, \
            as the refcount table counts owners. It is inside the tree when its file has every \
            one of its names (hard links) inside the tree.

            shared: the rest of the mapped blocks. Each one is also referenced from outside the \
            tree: by a clone or snapshot elsewhere, by an open-unlinked file, or by a file of the \
            tree that also has a name outside it (deleting the tree would not free that file). \
            exclusive + shared = mapped.

            Directories, symlink targets and xattrs live in the pool, not in data blocks, and are \
            not counted.
            """)
    @OptionGroup var options: PoolOptions
    @Argument(help: "Directory (or file) inside the file system.") var path: String = "/"

    func run() throws {
        options.withStore { store in
            let top = try resolve(store, path, followLinks: false)
            let tree = try TreeFiles(store, top)
            let space = try TreeSpace(store, tree)
            let blockSize = UInt64(store.blockSize)
            let outside = tree.files.values.filter { !$0.allNamesInside }.count
            var line = "\(path): \(tree.directories) director\(tree.directories == 1 ? "y" : "ies"), "
                + "\(tree.files.count) file\(tree.files.count == 1 ? "" : "s")"
            if outside > 0 { line += " (\(outside) also named outside the tree)" }
            print(line)
            print("mapped:     \(try amount(space.mapped, blockSize))")
            print("exclusive:  \(try amount(space.exclusive, blockSize)): freed if the tree were deleted")
            print("shared:     \(try amount(space.shared, blockSize)): also referenced from outside the tree")
        }
    }

    func amount(_ blocks: UInt64, _ blockSize: UInt64) throws -> String {
        let (bytes, overflow) = blocks.multipliedReportingOverflow(by: blockSize)
        guard !overflow else { throw Message("\(blocks) blocks of \(blockSize) bytes overflow a byte count: the pool is damaged") }
        return "\(blocks) block\(blocks == 1 ? "" : "s"), \(bytes) bytes (\(human(bytes)))"
    }
}

/// The regular files of a tree: for each inode, its names inside the tree
/// against its link count.
struct TreeFiles {
    struct File {
        var namesInside: UInt64
        var nlink: UInt32
        /// Deleting the tree would delete the file (a damaged, too small link count counts as all).
        var allNamesInside: Bool { namesInside >= UInt64(nlink) }
    }
    var files: [UInt64: File] = [:]
    var directories = 0

    /// Walks the tree at `top` by readdir; `top` itself may be a file (one name
    /// inside) or anything else (no blocks).
    init(_ store: MetadataStore, _ top: Resolved) throws {
        switch top.attributes.type {
        case .regular:
            files[top.ino] = File(namesInside: 1, nlink: top.attributes.nlink)
            return
        case .directory: break
        default: return
        }
        var visited: Set<UInt64> = [top.ino]
        var pending: [UInt64] = [top.ino]
        while let directory = pending.popLast() {
            for entry in try allEntries(store, directory) where entry.name != [0x2E] && entry.name != [0x2E, 0x2E] {
                let attrs = try store.getattr(entry.ino)
                switch attrs.type {
                case .directory:
                    // Counts would be wrong, not merely repeated: refuse.
                    guard visited.insert(entry.ino).inserted else {
                        throw Message("directory \(entry.ino) is reached twice under \(AttributeText.displayName(entry.name)): the pool is damaged (run fsck.pmfs)")
                    }
                    directories += 1
                    pending.append(entry.ino)
                case .regular:
                    files[entry.ino, default: File(namesInside: 0, nlink: attrs.nlink)].namesInside += 1
                default:
                    break
                }
            }
        }
    }
}

/// Mapped, exclusive and shared blocks of a tree's files. The extents of the
/// files are swept in device-block order: over each run, `inside` references
/// come from files wholly inside the tree and `all` from every file of it;
/// the refcount table gives the block's owners. Exclusive means owners ==
/// inside. Owners below `all` cannot be (the table counts every extent): damage.
struct TreeSpace {
    var mapped: UInt64 = 0
    var exclusive: UInt64 = 0
    var shared: UInt64 = 0

    private struct Edge {
        var at: UInt64
        var inside: Int
        var all: Int
    }

    init(_ store: MetadataStore, _ tree: TreeFiles) throws {
        var edges: [Edge] = []
        var segments: [ExtentSegment] = []
        for (ino, file) in tree.files.sorted(by: { $0.key < $1.key }) {
            try store.mapBlocks(ino, start: 0, count: UInt64.max, into: &segments)
            let inside = file.allNamesInside ? 1 : 0
            for s in segments {
                guard let device = s.deviceBlock else { continue }
                let (end, overflow) = device.addingReportingOverflow(s.length)
                guard !overflow else { throw Message("inode \(ino) maps device blocks \(device)+\(s.length) past the largest block number: the pool is damaged") }
                edges.append(Edge(at: device, inside: inside, all: 1))
                edges.append(Edge(at: end, inside: -inside, all: -1))
            }
        }
        edges.sort { $0.at < $1.at }
        var inside = 0, all = 0, i = 0
        while i < edges.count {
            let at = edges[i].at
            while i < edges.count && edges[i].at == at { inside += edges[i].inside; all += edges[i].all; i += 1 }
            guard i < edges.count, all > 0 else { continue }
            try count(store, start: at, length: edges[i].at - at, inside: UInt64(inside), all: UInt64(all))
        }
    }

    private mutating func count(_ store: MetadataStore, start: UInt64, length: UInt64, inside: UInt64, all: UInt64) throws {
        for piece in try store.blockOwners(start, count: length) {
            guard piece.owners >= all else {
                throw Message("device blocks \(piece.start)+\(piece.length) have \(piece.owners) owner(s) in the refcount table, "
                              + "but the tree's files map them \(all) times: the pool is damaged (run fsck.pmfs)")
            }
            mapped = try add(mapped, piece.length)
            if piece.owners == inside { exclusive = try add(exclusive, piece.length) } else { shared = try add(shared, piece.length) }
        }
    }

    private func add(_ a: UInt64, _ b: UInt64) throws -> UInt64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        guard !overflow else { throw Message("the tree's block count overflows: the pool is damaged") }
        return sum
    }
}
