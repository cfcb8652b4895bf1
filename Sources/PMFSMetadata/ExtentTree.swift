import CPMDK
import SystemPackage

/// A file's extent map: a B+-tree in the pool keyed by file block. Each leaf
/// value maps [key, key+length) to device blocks; extents never overlap.
///
/// Invariants: keys ascend within a node; an inner node with n keys has n+1
/// children and keys[i] is the least key in children[i+1]'s subtree; all
/// leaves are at one depth; no node is empty except an empty root leaf.
/// Deletion removes empty nodes but does not merge underfull ones: space, not
/// correctness, and random-write workloads mostly add extents.
///
/// The tree is read from the pool and may be damaged: every extent read is
/// checked (non-empty, inside the largest file, inside the data area of the
/// device) before anyone computes with it, and every walk is bounded (depth,
/// nodes visited), so a shared or cyclic subtree cannot make one run forever.
/// Damage is `PoolError.corrupt`: EIO for the request, fsck.pmfs mends it.
struct ExtentTree {
    let pool: PersistentPool
    /// Where the root node's offset is kept (a file's content_off).
    let rootSlot: UnsafeMutablePointer<UInt64>
    /// The record count kept beside the root (a file's extent_count).
    let countSlot: UnsafeMutablePointer<UInt64>
    /// Device blocks an extent may map: past the header, inside the device.
    let dataArea: Range<UInt64>
    /// The pmemobj type of the nodes, so fsck can tell file trees from the refcount tree.
    let nodeType: pmfs_type_num

    /// The extent map of file `inode`.
    init(pool: PersistentPool, inode: UnsafeMutablePointer<pmfs_inode>, dataArea: Range<UInt64>) {
        self.init(pool: pool, root: field(inode, \.content_off), count: field(inode, \.extent_count), dataArea: dataArea, nodeType: PMFS_T_EXTENT_NODE)
    }

    init(pool: PersistentPool, root: UnsafeMutablePointer<UInt64>, count: UnsafeMutablePointer<UInt64>, dataArea: Range<UInt64>, nodeType: pmfs_type_num) {
        self.pool = pool; self.rootSlot = root; self.countSlot = count; self.dataArea = dataArea; self.nodeType = nodeType
    }

    static let fanout = Int(PMFS_EXTENT_FANOUT)
    static let maxDepth = 64
    static let maxFileBlock = MetadataStore.maxFileSize / 4096
    /// Nodes one search may visit. A sound tree needs about two root-to-leaf
    /// paths; only a damaged one (empty nodes, keys out of order) needs more.
    static let searchBudget = 4 * maxDepth

    struct Entry: Equatable {
        var fileBlock: UInt64
        var deviceBlock: UInt64
        var length: UInt64
        var flags: UInt32
        var end: UInt64 { fileBlock + length }
    }

    private func node(_ off: UInt64) throws -> UnsafeMutablePointer<pmfs_extent_node> {
        let n: UnsafeMutablePointer<pmfs_extent_node> = try pool.pointer(off)
        // A node never holds `fanout` keys (it splits at that); reading one that
        // does stays inside the node, but inserting into it would not.
        guard Int(n.pointee.key_count) < Self.fanout else { throw PoolError.corrupt("extent node at \(off) has \(n.pointee.key_count) keys") }
        return n
    }

    @inline(__always) private func key(_ n: UnsafeMutablePointer<pmfs_extent_node>, _ i: Int) -> UInt64 {
        element(n, \.keys, i, as: UInt64.self).pointee
    }
    @inline(__always) private func keyPtr(_ n: UnsafeMutablePointer<pmfs_extent_node>, _ i: Int) -> UnsafeMutablePointer<UInt64> {
        element(n, \.keys, i, as: UInt64.self)
    }
    @inline(__always) private func child(_ n: UnsafeMutablePointer<pmfs_extent_node>, _ i: Int) -> UInt64 {
        element(n, \.u, i, as: UInt64.self).pointee
    }
    @inline(__always) private func childPtr(_ n: UnsafeMutablePointer<pmfs_extent_node>, _ i: Int) -> UnsafeMutablePointer<UInt64> {
        element(n, \.u, i, as: UInt64.self)
    }
    @inline(__always) private func extentPtr(_ n: UnsafeMutablePointer<pmfs_extent_node>, _ i: Int) -> UnsafeMutablePointer<pmfs_extent> {
        element(n, \.u, i, as: pmfs_extent.self)
    }

    /// Index of the child of inner node `n` whose subtree holds `k`.
    private func childIndex(_ n: UnsafeMutablePointer<pmfs_extent_node>, _ k: UInt64) -> Int {
        var lo = 0, hi = Int(n.pointee.key_count)
        while lo < hi {
            let mid = (lo + hi) / 2
            if key(n, mid) <= k { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Extent `i` of leaf `n`, checked: `end` and `deviceBlock + length` cannot
    /// overflow, and the blocks lie in the data area (a damaged extent must not
    /// send a write to the device header or past the device's end).
    private func entry(_ n: UnsafeMutablePointer<pmfs_extent_node>, _ i: Int) throws -> Entry {
        let e = extentPtr(n, i).pointee
        let fileBlock = key(n, i), length = UInt64(e.length)
        guard length > 0, fileBlock <= Self.maxFileBlock, length <= Self.maxFileBlock - fileBlock,
              e.device_block >= dataArea.lowerBound, e.device_block <= dataArea.upperBound,
              length <= dataArea.upperBound - e.device_block else {
            throw PoolError.corrupt("extent at file block \(fileBlock) maps device blocks \(e.device_block)+\(length), outside the data area \(dataArea.lowerBound)..<\(dataArea.upperBound)")
        }
        return Entry(fileBlock: fileBlock, deviceBlock: e.device_block, length: length, flags: e.flags)
    }

    // MARK: queries

    /// The extent with the greatest key <= `block`, if any.
    func floor(_ block: UInt64) throws -> Entry? {
        var off = rootSlot.pointee
        guard off != 0 else { return nil }
        var best: Entry? = nil
        var depth = 0
        while true {
            let n = try node(off)
            if n.pointee.is_leaf != 0 {
                // Last key <= block in this leaf.
                var lo = 0, hi = Int(n.pointee.key_count)
                while lo < hi {
                    let mid = (lo + hi) / 2
                    if key(n, mid) <= block { lo = mid + 1 } else { hi = mid }
                }
                return lo > 0 ? try entry(n, lo - 1) : best
            }
            let ci = childIndex(n, block)
            // If the chosen leaf has no key <= block, the answer is the greatest entry
            // left of it; track it by descending the left sibling's rightmost path lazily.
            if ci > 0 { best = try last(inSubtree: child(n, ci - 1)) ?? best }
            off = child(n, ci)
            depth += 1
            if depth > Self.maxDepth { throw PoolError.corrupt("extent tree too deep") }
        }
    }

    private func last(inSubtree off: UInt64) throws -> Entry? {
        var o = off
        for _ in 0..<Self.maxDepth {
            let n = try node(o)
            let count = Int(n.pointee.key_count)
            if n.pointee.is_leaf != 0 { return count > 0 ? try entry(n, count - 1) : nil }
            o = child(n, count)
        }
        throw PoolError.corrupt("extent tree too deep")
    }

    /// The extent with the least key >= `block`, if any.
    func ceiling(_ block: UInt64) throws -> Entry? {
        var budget = Self.searchBudget
        return try ceilingFrom(rootSlot.pointee, block, depth: 0, budget: &budget)
    }

    /// Tries the children right of the one holding `block` when it has nothing
    /// at or past it; `budget` bounds the nodes visited, or a damaged tree whose
    /// children all share one subtree would be searched exponentially.
    private func ceilingFrom(_ off: UInt64, _ block: UInt64, depth: Int, budget: inout Int) throws -> Entry? {
        guard off != 0 else { return nil }
        guard depth < Self.maxDepth else { throw PoolError.corrupt("extent tree too deep") }
        budget -= 1
        guard budget >= 0 else { throw PoolError.corrupt("extent tree search visits too many nodes (shared or empty subtrees)") }
        let n = try node(off)
        let count = Int(n.pointee.key_count)
        if n.pointee.is_leaf != 0 {
            var lo = 0, hi = count
            while lo < hi {
                let mid = (lo + hi) / 2
                if key(n, mid) < block { lo = mid + 1 } else { hi = mid }
            }
            return lo < count ? try entry(n, lo) : nil
        }
        var ci = childIndex(n, block)
        // The child holding block may have only smaller keys; then the next child starts past it.
        while ci <= count {
            if let e = try ceilingFrom(child(n, ci), block, depth: depth + 1, budget: &budget) { return e }
            ci += 1
        }
        return nil
    }

    /// Every extent overlapping [start, end), in order.
    func overlapping(_ start: UInt64, _ end: UInt64) throws -> [Entry] {
        var result: [Entry] = []
        try forEachOverlapping(start, end) { result.append($0) }
        return result
    }

    /// Every extent overlapping [start, end), in order, handed to `body`.
    func forEachOverlapping(_ start: UInt64, _ end: UInt64, _ body: (Entry) throws -> Void) throws {
        var last: Entry?
        if let f = try floor(start), f.end > start { try body(f); last = f }
        var next = start
        while let e = try ceiling(next), e.fileBlock < end {
            if last != e { try body(e); last = e }
            next = e.fileBlock + 1
        }
    }

    /// Visits every extent in order (used by fsck, stat and freeing).
    func forEach(_ body: (Entry) throws -> Void) throws {
        try visit(rootSlot.pointee, depth: 0, leaf: { n in
            for i in 0..<Int(n.pointee.key_count) { try body(entry(n, i)) }
        }, node: { _ in })
    }

    /// Visits every node and leaf once. A node reached twice (a subtree shared
    /// by two parents, or a cycle) is damage: the walk stops instead of going
    /// over it again, which could take exponential time or free it twice.
    func visit(_ off: UInt64, depth: Int, leaf: (UnsafeMutablePointer<pmfs_extent_node>) throws -> Void,
               node visitNode: (UInt64) throws -> Void) throws {
        var seen = Set<UInt64>()
        try visit(off, depth: depth, seen: &seen, leaf: leaf, node: visitNode)
    }

    private func visit(_ off: UInt64, depth: Int, seen: inout Set<UInt64>, leaf: (UnsafeMutablePointer<pmfs_extent_node>) throws -> Void,
                       node visitNode: (UInt64) throws -> Void) throws {
        guard off != 0 else { return }
        guard depth < Self.maxDepth else { throw PoolError.corrupt("extent tree too deep") }
        guard seen.insert(off).inserted else { throw PoolError.corrupt("extent node at \(off) is reached twice") }
        try visitNode(off)
        let n = try node(off)
        if n.pointee.is_leaf != 0 { try leaf(n); return }
        for i in 0...Int(n.pointee.key_count) {
            try visit(child(n, i), depth: depth + 1, seen: &seen, leaf: leaf, node: visitNode)
        }
    }

    // MARK: changes

    /// Inserts an extent whose key is not present.
    func insert(_ e: Entry, in tx: Transaction) throws {
        guard e.length > 0 && e.length <= UInt64(UInt32.max) else { throw PoolError.corrupt("extent of \(e.length) blocks") }
        if rootSlot.pointee == 0 {
            let off = try tx.allocate(size: MemoryLayout<pmfs_extent_node>.size, type: nodeType)
            let n = try node(off)
            n.pointee.is_leaf = 1
            try tx.snapshot(rootSlot)
            rootSlot.pointee = off
        }
        if let (sepKey, right) = try insert(e, into: rootSlot.pointee, tx: tx, depth: 0) {
            // The root split: grow the tree by one level.
            let off = try tx.allocate(size: MemoryLayout<pmfs_extent_node>.size, type: nodeType)
            let root = try node(off)
            root.pointee.key_count = 1
            keyPtr(root, 0).pointee = sepKey
            childPtr(root, 0).pointee = rootSlot.pointee
            childPtr(root, 1).pointee = right
            try tx.snapshot(rootSlot)
            rootSlot.pointee = off
        }
        try tx.snapshot(countSlot)
        countSlot.pointee.incrementSaturating()
    }

    /// Returns (separator key, new right sibling) when `off` split.
    private func insert(_ e: Entry, into off: UInt64, tx: Transaction, depth: Int) throws -> (UInt64, UInt64)? {
        guard depth < Self.maxDepth else { throw PoolError.corrupt("extent tree too deep") }
        let n = try node(off)
        let count = Int(n.pointee.key_count)
        if n.pointee.is_leaf != 0 {
            var pos = 0
            while pos < count && key(n, pos) < e.fileBlock { pos += 1 }
            if pos < count && key(n, pos) == e.fileBlock { throw PoolError.corrupt("duplicate extent key \(e.fileBlock)") }
            try tx.snapshot(n)
            for i in stride(from: count, to: pos, by: -1) {
                keyPtr(n, i).pointee = key(n, i - 1)
                extentPtr(n, i).pointee = extentPtr(n, i - 1).pointee
            }
            keyPtr(n, pos).pointee = e.fileBlock
            extentPtr(n, pos).pointee = pmfs_extent(device_block: e.deviceBlock, length: UInt32(e.length), flags: e.flags)
            n.pointee.key_count = UInt32(count + 1)
            if count + 1 < Self.fanout { return nil }
            // Split the full leaf in two halves.
            let rightOff = try tx.allocate(size: MemoryLayout<pmfs_extent_node>.size, type: nodeType)
            let r = try node(rightOff)
            r.pointee.is_leaf = 1
            let half = (count + 1) / 2
            for i in half..<(count + 1) {
                keyPtr(r, i - half).pointee = key(n, i)
                extentPtr(r, i - half).pointee = extentPtr(n, i).pointee
            }
            r.pointee.key_count = UInt32(count + 1 - half)
            n.pointee.key_count = UInt32(half)
            return (key(r, 0), rightOff)
        }
        let ci = childIndex(n, e.fileBlock)
        guard let (sep, right) = try insert(e, into: child(n, ci), tx: tx, depth: depth + 1) else { return nil }
        try tx.snapshot(n)
        for i in stride(from: count, to: ci, by: -1) { keyPtr(n, i).pointee = key(n, i - 1) }
        for i in stride(from: count + 1, to: ci + 1, by: -1) { childPtr(n, i).pointee = child(n, i - 1) }
        keyPtr(n, ci).pointee = sep
        childPtr(n, ci + 1).pointee = right
        n.pointee.key_count = UInt32(count + 1)
        if count + 1 < Self.fanout { return nil }
        // Split the inner node: the middle key moves up.
        let total = count + 1
        let mid = total / 2
        let rightOff = try tx.allocate(size: MemoryLayout<pmfs_extent_node>.size, type: nodeType)
        let r = try node(rightOff)
        let upKey = key(n, mid)
        for i in (mid + 1)..<total { keyPtr(r, i - mid - 1).pointee = key(n, i) }
        for i in (mid + 1)...total { childPtr(r, i - mid - 1).pointee = child(n, i) }
        r.pointee.key_count = UInt32(total - mid - 1)
        n.pointee.key_count = UInt32(mid)
        return (upKey, rightOff)
    }

    /// Removes the extent keyed `block` (it must exist).
    func remove(_ block: UInt64, in tx: Transaction) throws {
        let root = rootSlot.pointee
        guard root != 0 else { throw PoolError.corrupt("removing extent \(block) from an empty tree") }
        let emptied = try remove(block, from: root, tx: tx, depth: 0)
        if emptied {
            try tx.free(root)
            try tx.snapshot(rootSlot)
            rootSlot.pointee = 0
        } else {
            // Collapse a root that is an inner node with a single child.
            var r = try node(rootSlot.pointee)
            var levels = 0
            while r.pointee.is_leaf == 0 && r.pointee.key_count == 0 {
                levels += 1
                guard levels < Self.maxDepth else { throw PoolError.corrupt("extent tree root chain loops") }
                let only = child(r, 0)
                try tx.free(rootSlot.pointee)
                try tx.snapshot(rootSlot)
                rootSlot.pointee = only
                r = try node(only)
            }
        }
        try tx.snapshot(countSlot)
        countSlot.pointee.decrementSaturating()
    }

    /// Returns true when the node at `off` became empty (the caller frees it).
    private func remove(_ block: UInt64, from off: UInt64, tx: Transaction, depth: Int) throws -> Bool {
        guard depth < Self.maxDepth else { throw PoolError.corrupt("extent tree too deep") }
        let n = try node(off)
        let count = Int(n.pointee.key_count)
        if n.pointee.is_leaf != 0 {
            guard let pos = (0..<count).first(where: { key(n, $0) == block }) else {
                throw PoolError.corrupt("extent \(block) missing from its leaf")
            }
            try tx.snapshot(n)
            for i in pos..<(count - 1) {
                keyPtr(n, i).pointee = key(n, i + 1)
                extentPtr(n, i).pointee = extentPtr(n, i + 1).pointee
            }
            n.pointee.key_count = UInt32(count - 1)
            return count == 1
        }
        let ci = childIndex(n, block)
        let childOff = child(n, ci)
        guard try remove(block, from: childOff, tx: tx, depth: depth + 1) else { return false }
        try tx.free(childOff)
        if count == 0 { return true }
        try tx.snapshot(n)
        // Drop child ci and the key that separates it from a neighbour.
        let keyToDrop = ci == 0 ? 0 : ci - 1
        for i in keyToDrop..<(count - 1) { keyPtr(n, i).pointee = key(n, i + 1) }
        for i in ci..<count { childPtr(n, i).pointee = child(n, i + 1) }
        n.pointee.key_count = UInt32(count - 1)
        return false
    }

    /// Changes the value of an existing extent in place (same key).
    func update(_ e: Entry, in tx: Transaction) throws {
        var off = rootSlot.pointee
        for _ in 0..<Self.maxDepth {
            guard off != 0 else { break }
            let n = try node(off)
            if n.pointee.is_leaf != 0 {
                guard let pos = (0..<Int(n.pointee.key_count)).first(where: { key(n, $0) == e.fileBlock }) else { break }
                let p = extentPtr(n, pos)
                try tx.snapshot(p)
                p.pointee = pmfs_extent(device_block: e.deviceBlock, length: UInt32(e.length), flags: e.flags)
                return
            }
            off = child(n, childIndex(n, e.fileBlock))
        }
        throw PoolError.corrupt("extent \(e.fileBlock) to update is missing")
    }

    /// Frees every node (not the data blocks) in `tx`.
    func destroyNodes(in tx: Transaction) throws {
        var nodes: [UInt64] = []
        try visit(rootSlot.pointee, depth: 0, leaf: { _ in }, node: { nodes.append($0) })
        for off in nodes { try tx.free(off) }
        try tx.snapshot(rootSlot)
        rootSlot.pointee = 0
        try tx.snapshot(countSlot)
        countSlot.pointee = 0
    }
}
