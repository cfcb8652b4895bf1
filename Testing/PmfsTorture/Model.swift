import Glibc
import PMFSMetadata
import SystemPackage

/// A DRAM model of the namespace the torture run changes: what every operation
/// should do (or which errno it should fail with), mirroring the order in which
/// the engine checks its arguments. Value type: copying it is how the parent
/// gets "the state with the in-flight operation applied" beside the one without.
struct TortureModel: Sendable {
    struct Node: Sendable {
        var type: FileType
        var permissions: UInt32
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        var size: UInt64 = 0
        var target: String = ""
        var xattrs: [String: [UInt8]] = [:]
        /// File blocks that have device blocks.
        var blocks: Set<UInt64> = []
        /// nil: changed to "now" by the engine, not predictable.
        var atime: Timestamp?
        var mtime: Timestamp?
        /// Directories only.
        var children: [String: Int] = [:]
        var parent: Int = 0
        /// Names that refer to this node (files); an unnamed temporary has 0.
        var links: Int = 1
        /// Copied by a read-only snapshot (PMFS_INODE_READONLY): the store refuses
        /// a snapshot into it; the rest is the FUSE layer's to refuse.
        var readOnly = false
    }

    static let rootID = 1
    var nodes: [Int: Node] = [:]
    /// Unnamed files by handle (tmpfile), and pinned orphans (invisible: not modelled).
    var temporaries: [Int: Int] = [:]
    private var nextID = 1 << 40

    init() {
        nodes[Self.rootID] = Node(type: .directory, permissions: 0o755, parent: Self.rootID)
    }

    private mutating func newID() -> Int { nextID += 1; return nextID }

    static func components(_ path: String) -> [String] {
        path.split(separator: "/").map(String.init)
    }

    // MARK: path resolution, as the child walks it with lookups

    func resolve(_ components: some Collection<String>) -> Result<Int, Errno> {
        var id = Self.rootID
        for c in components {
            guard let n = nodes[id], n.type == .directory else { return .failure(.notDirectory) }
            guard let next = n.children[c] else { return .failure(.noSuchFileOrDirectory) }
            id = next
        }
        return .success(id)
    }

    func resolve(_ path: String) -> Result<Int, Errno> { resolve(Self.components(path)) }

    /// The parent directory and last name of `path`.
    func parent(_ path: String) -> Result<(Int, String), Errno> {
        let c = Self.components(path)
        guard let name = c.last else { return .failure(.invalidArgument) }
        return resolve(c.dropLast()).map { ($0, name) }
    }

    func isAncestor(_ a: Int, of b: Int) -> Bool {
        var id = b
        var steps = 0
        while true {
            if id == a { return true }
            if id == Self.rootID { return false }
            id = nodes[id]!.parent
            steps += 1
            if steps > nodes.count { return false }
        }
    }

    /// Removes one name of `id` (already taken out of its directory).
    private mutating func dropLink(_ id: Int) {
        if nodes[id]!.type == .directory {
            nodes[id] = nil
            return
        }
        nodes[id]!.links -= 1
        if nodes[id]!.links == 0 { nodes[id] = nil }
    }

    private func requireDirectory(_ id: Int) -> Errno? {
        nodes[id]!.type == .directory ? nil : .notDirectory
    }

    // MARK: operations

    /// Applies `op` if the engine should accept it; returns the errno it should fail with.
    mutating func apply(_ op: TortureOp) -> Errno? {
        switch apply0(op) {
        case .success: return nil
        case .failure(let e): return e
        }
    }

    private mutating func apply0(_ op: TortureOp) -> Result<Void, Errno> {
        switch op {
        case .create(let path, let perm):
            return makeEntry(path, Node(type: .regular, permissions: perm & 0o7777))
        case .mkdir(let path, let perm):
            return makeEntry(path, Node(type: .directory, permissions: perm & 0o7777))
        case .symlink(let path, let target):
            return makeEntry(path, Node(type: .symbolicLink, permissions: 0o777, size: UInt64(target.utf8.count), target: target))

        case .link(let old, let new):
            let src: Int
            switch resolve(old) { case .success(let s): src = s; case .failure(let e): return .failure(e) }
            let (dir, name): (Int, String)
            switch parent(new) { case .success(let p): (dir, name) = p; case .failure(let e): return .failure(e) }
            if nodes[src]!.type == .directory { return .failure(.notPermitted) }
            if let e = requireDirectory(dir) { return .failure(e) }
            if nodes[dir]!.children[name] != nil { return .failure(.fileExists) }
            nodes[dir]!.children[name] = src
            nodes[src]!.links += 1
            return .success(())

        case .unlink(let path), .orphan(let path, _):
            let (dir, name): (Int, String)
            switch parent(path) { case .success(let p): (dir, name) = p; case .failure(let e): return .failure(e) }
            if let e = requireDirectory(dir) { return .failure(e) }
            guard let id = nodes[dir]!.children[name] else { return .failure(.noSuchFileOrDirectory) }
            if nodes[id]!.type == .directory { return .failure(.isDirectory) }
            nodes[dir]!.children[name] = nil
            dropLink(id)
            return .success(())

        case .rmdir(let path):
            let (dir, name): (Int, String)
            switch parent(path) { case .success(let p): (dir, name) = p; case .failure(let e): return .failure(e) }
            if let e = requireDirectory(dir) { return .failure(e) }
            guard let id = nodes[dir]!.children[name] else { return .failure(.noSuchFileOrDirectory) }
            if nodes[id]!.type != .directory { return .failure(.notDirectory) }
            if !nodes[id]!.children.isEmpty { return .failure(.directoryNotEmpty) }
            nodes[dir]!.children[name] = nil
            dropLink(id)
            return .success(())

        case .rename(let old, let new, let flags):
            return rename(old, new, RenameFlags(rawValue: flags))

        case .setattr(let path, let spec):
            let id: Int
            switch resolve(path) { case .success(let s): id = s; case .failure(let e): return .failure(e) }
            var n = nodes[id]!
            if spec.size != nil {
                switch n.type {
                case .regular: break
                case .directory: return .failure(.isDirectory)
                default: return .failure(.invalidArgument)
                }
            }
            if let m = spec.mode { n.permissions = m & 0o7777 }
            if let u = spec.uid { n.uid = u }
            if let a = spec.atime { n.atime = Timestamp(seconds: a, nanoseconds: 0) }
            if let m = spec.mtime { n.mtime = Timestamp(seconds: m, nanoseconds: 0) }
            if let size = spec.size {
                // Any truncate, growing or not, drops blocks wholly past the new end
                // (fallocate KEEP_SIZE leftovers), and sets mtime unless given.
                let keep = (size + 4095) / 4096
                n.blocks = n.blocks.filter { $0 < keep }
                n.size = size
                if spec.mtime == nil { n.mtime = nil }
            }
            nodes[id] = n
            return .success(())

        case .setxattr(let path, let name, let value, let mode):
            let id: Int
            switch resolve(path) { case .success(let s): id = s; case .failure(let e): return .failure(e) }
            let exists = nodes[id]!.xattrs[name] != nil
            if exists && mode == 1 { return .failure(.fileExists) }
            if !exists && mode == 2 { return .failure(.noData) }
            nodes[id]!.xattrs[name] = value
            return .success(())

        case .removexattr(let path, let name):
            let id: Int
            switch resolve(path) { case .success(let s): id = s; case .failure(let e): return .failure(e) }
            guard nodes[id]!.xattrs[name] != nil else { return .failure(.noData) }
            nodes[id]!.xattrs[name] = nil
            return .success(())

        case .allocate(let path, let start, let count), .punch(let path, let start, let count), .write(let path, let start, let count):
            let id: Int
            switch resolve(path) { case .success(let s): id = s; case .failure(let e): return .failure(e) }
            switch nodes[id]!.type {
            case .regular: break
            case .directory: return .failure(.isDirectory)
            default: return .failure(.invalidArgument)
            }
            switch op {
            case .allocate, .write:
                // A write-back committed without a new mtime: the data tier's times are not modelled.
                for b in start..<(start + count) { nodes[id]!.blocks.insert(b) }
            default:
                for b in start..<(start + count) { nodes[id]!.blocks.remove(b) }
                nodes[id]!.mtime = nil
            }
            return .success(())

        case .unpin:
            return .success(())

        case .tmpfile(let k, let perm):
            let id = newID()
            nodes[id] = Node(type: .regular, permissions: perm & 0o7777, links: 0)
            temporaries[k] = id
            return .success(())

        case .snapshot(let source, let target, let readOnly):
            return snapshot(source, target, readOnly: readOnly == 1)

        case .linkTmp(let k, let path):
            guard let id = temporaries[k] else { return .failure(.noSuchFileOrDirectory) }
            let (dir, name): (Int, String)
            switch parent(path) { case .success(let p): (dir, name) = p; case .failure(let e): return .failure(e) }
            if let e = requireDirectory(dir) { return .failure(e) }
            if nodes[dir]!.children[name] != nil { return .failure(.fileExists) }
            nodes[dir]!.children[name] = id
            nodes[id]!.links += 1
            temporaries[k] = nil
            return .success(())
        }
    }

    /// As MetadataStore.snapshot checks, in its order: the target's parent,
    /// the source, then the copy (hard links inside stay links).
    private mutating func snapshot(_ source: String, _ target: String, readOnly: Bool) -> Result<Void, Errno> {
        let (dir, name): (Int, String)
        switch parent(target) { case .success(let p): (dir, name) = p; case .failure(let e): return .failure(e) }
        let src: Int
        switch resolve(source) { case .success(let s): src = s; case .failure(let e): return .failure(e) }
        if let e = requireDirectory(dir) { return .failure(e) }
        if nodes[dir]!.readOnly { return .failure(.readOnlyFileSystem) }
        if nodes[dir]!.children[name] != nil { return .failure(.fileExists) }
        if let e = requireDirectory(src) { return .failure(e) }
        if isAncestor(src, of: dir) { return .failure(.invalidArgument) }
        var copies: [Int: Int] = [:]
        var queue = [src]
        while let old = queue.popLast() {
            guard copies[old] == nil else { continue }   // a second name of a hard-linked file
            var n = nodes[old]!
            let id = newID()
            copies[old] = id
            n.readOnly = readOnly
            if n.type == .directory {
                queue.append(contentsOf: n.children.values)
            } else {
                n.links = 0   // counted below, names inside the tree only
            }
            nodes[id] = n
        }
        for (old, id) in copies where nodes[id]!.type == .directory {
            nodes[id]!.children = nodes[old]!.children.mapValues { copies[$0]! }
            for child in nodes[id]!.children.values {
                if nodes[child]!.type == .directory { nodes[child]!.parent = id } else { nodes[child]!.links += 1 }
            }
        }
        let root = copies[src]!
        nodes[root]!.parent = dir
        nodes[dir]!.children[name] = root
        return .success(())
    }

    private mutating func makeEntry(_ path: String, _ node: Node) -> Result<Void, Errno> {
        let (dir, name): (Int, String)
        switch parent(path) { case .success(let p): (dir, name) = p; case .failure(let e): return .failure(e) }
        if let e = requireDirectory(dir) { return .failure(e) }
        if nodes[dir]!.children[name] != nil { return .failure(.fileExists) }
        let id = newID()
        var n = node
        n.parent = dir
        nodes[id] = n
        nodes[dir]!.children[name] = id
        return .success(())
    }

    private mutating func rename(_ old: String, _ new: String, _ flags: RenameFlags) -> Result<Void, Errno> {
        let (od, on): (Int, String)
        switch parent(old) { case .success(let p): (od, on) = p; case .failure(let e): return .failure(e) }
        let (nd, nn): (Int, String)
        switch parent(new) { case .success(let p): (nd, nn) = p; case .failure(let e): return .failure(e) }
        if flags.contains(.noReplace) && flags.contains(.exchange) { return .failure(.invalidArgument) }
        if let e = requireDirectory(od) { return .failure(e) }
        guard let src = nodes[od]!.children[on] else { return .failure(.noSuchFileOrDirectory) }
        if let e = requireDirectory(nd) { return .failure(e) }
        let dst = nodes[nd]!.children[nn]
        let cross = od != nd
        let srcIsDir = nodes[src]!.type == .directory

        if flags.contains(.exchange) {
            guard let dst else { return .failure(.noSuchFileOrDirectory) }
            if dst == src { return .success(()) }
            let dstIsDir = nodes[dst]!.type == .directory
            if cross {
                if srcIsDir && isAncestor(src, of: nd) { return .failure(.invalidArgument) }
                if dstIsDir && isAncestor(dst, of: od) { return .failure(.invalidArgument) }
            }
            nodes[od]!.children[on] = dst
            nodes[nd]!.children[nn] = src
            if srcIsDir { nodes[src]!.parent = nd }
            if dstIsDir { nodes[dst]!.parent = od }
            return .success(())
        }

        if let dst {
            if flags.contains(.noReplace) { return .failure(.fileExists) }
            if dst == src { return .success(()) }
            let dstIsDir = nodes[dst]!.type == .directory
            if srcIsDir && !dstIsDir { return .failure(.notDirectory) }
            if !srcIsDir && dstIsDir { return .failure(.isDirectory) }
            if dstIsDir && !nodes[dst]!.children.isEmpty { return .failure(.directoryNotEmpty) }
        }
        if srcIsDir && cross && isAncestor(src, of: nd) { return .failure(.invalidArgument) }
        if let dst {
            nodes[nd]!.children[nn] = nil
            dropLink(dst)
        }
        nodes[nd]!.children[nn] = src
        nodes[od]!.children[on] = nil
        if srcIsDir { nodes[src]!.parent = nd }
        return .success(())
    }

    // MARK: listing, for choosing operations

    struct Listed {
        var path: String
        var id: Int
        var depth: Int
    }

    /// Every named node, parents before children, in a stable order.
    func listing() -> [Listed] {
        var out: [Listed] = []
        var stack: [(Int, String, Int)] = [(Self.rootID, "", 0)]
        while let (dir, prefix, depth) = stack.popLast() {
            for (name, id) in nodes[dir]!.children.sorted(by: { $0.key < $1.key }) {
                let path = prefix + "/" + name
                out.append(Listed(path: path, id: id, depth: depth + 1))
                if nodes[id]!.type == .directory { stack.append((id, path, depth + 1)) }
            }
        }
        return out
    }

    // MARK: comparison

    /// What a path shows: everything the crash test compares.
    struct Observed: Equatable, CustomStringConvertible {
        var type: FileType
        var permissions: UInt32
        var uid: UInt32
        var size: UInt64
        var target: String
        var xattrs: [String: [UInt8]]
        var blocks: [UInt64]
        var atime: Timestamp?
        var mtime: Timestamp?
        var readOnly: Bool
        /// The first path (in sorted order) naming the same node: hard-link identity.
        var identity: String

        var description: String {
            "\(type) perm=\(String(permissions, radix: 8)) uid=\(uid) size=\(size) target=\(target) xattrs=\(xattrs.keys.sorted()) "
                + "blocks=\(blocks.count) \(readOnly ? "read-only " : "")atime=\(atime.map { "\($0.seconds)" } ?? "?") mtime=\(mtime.map { "\($0.seconds)" } ?? "?") same-as=\(identity)"
        }
    }

    func observed() -> [String: Observed] {
        let list = listing()
        var firstPath: [Int: String] = [:]
        for e in list.sorted(by: { $0.path < $1.path }) where firstPath[e.id] == nil { firstPath[e.id] = e.path }
        var out: [String: Observed] = [:]
        for e in list {
            let n = nodes[e.id]!
            // A directory's size is its slot space, which the model does not follow.
            out[e.path] = Observed(type: n.type, permissions: n.permissions, uid: n.uid,
                                   size: n.type == .directory ? 0 : n.size, target: n.target,
                                   xattrs: n.xattrs, blocks: n.blocks.sorted(), atime: n.atime,
                                   mtime: n.type == .directory ? nil : n.mtime, readOnly: n.readOnly,
                                   identity: firstPath[e.id]!)
        }
        return out
    }

    /// The first difference between the pool's tree (`actual`, all times known)
    /// and this model, or nil. Unknown model times match anything.
    func difference(from actual: [String: Observed]) -> String? {
        let expected = observed()
        for path in Set(expected.keys).union(actual.keys).sorted() {
            guard let e = expected[path] else { return "\(path): in the pool, not in the model (\(actual[path]!))" }
            guard var a = actual[path] else { return "\(path): in the model, missing from the pool (\(e))" }
            if e.atime == nil { a.atime = nil }
            if e.mtime == nil { a.mtime = nil }
            if a != e { return "\(path): pool has \(a), model has \(e)" }
        }
        return nil
    }
}

extension TortureModel {
    /// Reads the whole tree of `store` into a model whose ids are inode numbers,
    /// checking on the way what only the pool can show: entry types, "..",
    /// link counts, and block counts agree with the tree.
    static func read(from store: MetadataStore) throws -> (TortureModel, problems: [String]) {
        var model = TortureModel()
        var problems: [String] = []
        model.nodes = [:]
        let rootAttributes = try store.getattr(PMFS_ROOT)
        model.nodes[rootID] = Node(type: .directory, permissions: rootAttributes.permissions, uid: rootAttributes.uid,
                                   gid: rootAttributes.gid, parent: rootID)
        var nlinks: [Int: UInt32] = [rootID: rootAttributes.nlink]
        var queue: [Int] = [rootID]
        while let dir = queue.popLast() {
            var cookie: UInt64 = 0
            while true {
                let batch = try store.readdir(UInt64(dir), cookie: cookie, limit: 128)
                if batch.isEmpty { break }
                for entry in batch {
                    cookie = entry.nextCookie
                    let name = String(decoding: entry.name, as: UTF8.self)
                    if name == "." {
                        if entry.ino != UInt64(dir) { problems.append("dir \(dir): '.' is \(entry.ino)") }
                        continue
                    }
                    if name == ".." {
                        if entry.ino != UInt64(model.nodes[dir]!.parent) { problems.append("dir \(dir): '..' is \(entry.ino), expected \(model.nodes[dir]!.parent)") }
                        continue
                    }
                    let id = Int(entry.ino)
                    if model.nodes[dir]!.children[name] != nil { problems.append("dir \(dir): name \(name) listed twice") }
                    model.nodes[dir]!.children[name] = id
                    if model.nodes[id] != nil {
                        if model.nodes[id]!.type == .directory { problems.append("directory \(id) has a second name \(name)") }
                        model.nodes[id]!.links += 1
                        continue
                    }
                    let a = try store.getattr(entry.ino)
                    if a.type != entry.type { problems.append("entry \(name) in \(dir) says \(entry.type), inode \(id) is \(a.type)") }
                    var n = Node(type: a.type, permissions: a.permissions, uid: a.uid, gid: a.gid, size: a.size,
                                 atime: a.atime, mtime: a.mtime, parent: dir)
                    n.readOnly = a.readOnly
                    if a.type == .symbolicLink { n.target = String(decoding: try store.readlink(entry.ino), as: UTF8.self) }
                    for x in try store.listxattr(entry.ino) {
                        n.xattrs[String(decoding: x, as: UTF8.self)] = try store.getxattr(entry.ino, x)
                    }
                    if a.type == .regular {
                        for s in try store.mapBlocks(entry.ino, start: 0, count: 1 << 20) where s.deviceBlock != nil {
                            for b in s.fileBlock..<(s.fileBlock + s.length) { n.blocks.insert(b) }
                        }
                        if a.blocks != UInt64(n.blocks.count) * 8 {
                            problems.append("inode \(id): blocks=\(a.blocks), extents map \(n.blocks.count) blocks")
                        }
                    }
                    if a.type == .directory {
                        // Every entry change moves a directory's mtime: not modelled.
                        n.mtime = nil
                        queue.append(id)
                    }
                    nlinks[id] = a.nlink
                    model.nodes[id] = n
                }
            }
        }
        for (id, n) in model.nodes {
            let expected = n.type == .directory
                ? 2 + n.children.values.filter { model.nodes[$0]!.type == .directory }.count
                : n.links
            if nlinks[id] != UInt32(expected) { problems.append("inode \(id): nlink \(nlinks[id] ?? 0), tree gives \(expected)") }
        }
        model.nextID = 1 << 40
        return (model, problems)
    }

    static let PMFS_ROOT: UInt64 = 1

    /// Space accounting with blocks shared by snapshots: the device blocks that
    /// the regular files among `files` map are exactly the blocks in use (nothing leaked, nothing free
    /// mapped), and a block mapped by n > 1 extents has a refcount record of n
    /// owners, one mapped once has none. Problems found, the first few.
    static func blockAccounting(of store: MetadataStore, files: some Sequence<UInt64>) throws -> [String] {
        var mappings: [UInt64: UInt64] = [:]   // device block -> extents mapping it
        for ino in files where try store.getattr(ino).type == .regular {
            for s in try store.mapBlocks(ino, start: 0, count: 1 << 20) {
                guard let device = s.deviceBlock else { continue }
                for b in device..<(device + s.length) { mappings[b, default: 0] += 1 }
            }
        }
        var problems: [String] = []
        let stats = store.statistics()
        if stats.totalBlocks - stats.freeBlocks != UInt64(mappings.count) {
            problems.append("\(stats.totalBlocks - stats.freeBlocks) data blocks in use, files map \(mappings.count)")
        }
        var recorded: [UInt64: UInt64] = [:]
        for r in try store.sharedBlockRecords() {
            for b in r.start..<(r.start + r.length) { recorded[b] = r.owners }
        }
        for (b, n) in mappings.sorted(by: { $0.key < $1.key }) where n != recorded[b, default: 1] {
            problems.append("device block \(b): mapped \(n) times, refcount says \(recorded[b, default: 1])")
            if problems.count >= 5 { return problems }
        }
        for (b, n) in recorded.sorted(by: { $0.key < $1.key }) where mappings[b] == nil {
            problems.append("device block \(b): refcount record of \(n) owners, no file maps it")
            if problems.count >= 5 { return problems }
        }
        return problems
    }
}
