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
struct ExtentTree {
    let pool: PersistentPool
    /// The inode that owns the tree (its content_off is the root).
    let inode: UnsafeMutablePointer<pmfs_inode>

    static let fanout = Int(PMFS_EXTENT_FANOUT)

    struct Entry: Equatable {
        var fileBlock: UInt64
        var deviceBlock: UInt64
        var length: UInt64
        var flags: UInt32
        var end: UInt64 { fileBlock + length }
    }

    private func node(_ off: UInt64) throws -> UnsafeMutablePointer<pmfs_extent_node> {
        let n: UnsafeMutablePointer<pmfs_extent_node> = try pool.pointer(off)
        guard Int(n.pointee.key_count) <= Self.fanout else { throw PoolError.corrupt("extent node at \(off) has \(n.pointee.key_count) keys") }
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

    private func entry(_ n: UnsafeMutablePointer<pmfs_extent_node>, _ i: Int) -> Entry {
        let e = extentPtr(n, i).pointee
        return Entry(fileBlock: key(n, i), deviceBlock: e.device_block, length: UInt64(e.length), flags: e.flags)
    }

    // MARK: queries

    /// The extent with the greatest key <= `block`, if any.
    func floor(_ block: UInt64) throws -> Entry? {
        var off = inode.pointee.content_off
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
                return lo > 0 ? entry(n, lo - 1) : best
            }
            let ci = childIndex(n, block)
            // If the chosen leaf has no key <= block, the answer is the greatest entry
            // left of it; track it by descending the left sibling's rightmost path lazily.
            if ci > 0 { best = try last(inSubtree: child(n, ci - 1)) ?? best }
            off = child(n, ci)
            depth += 1
            if depth > 64 { throw PoolError.corrupt("extent tree too deep") }
        }
    }

    private func last(inSubtree off: UInt64) throws -> Entry? {
        var o = off
        for _ in 0..<64 {
            let n = try node(o)
            let count = Int(n.pointee.key_count)
            if n.pointee.is_leaf != 0 { return count > 0 ? entry(n, count - 1) : nil }
            o = child(n, count)
        }
        throw PoolError.corrupt("extent tree too deep")
    }

    /// The extent with the least key >= `block`, if any.
    func ceiling(_ block: UInt64) throws -> Entry? {
        try ceilingFrom(inode.pointee.content_off, block, depth: 0)
    }

    private func ceilingFrom(_ off: UInt64, _ block: UInt64, depth: Int) throws -> Entry? {
        guard off != 0 else { return nil }
        guard depth < 64 else { throw PoolError.corrupt("extent tree too deep") }
        let n = try node(off)
        let count = Int(n.pointee.key_count)
        if n.pointee.is_leaf != 0 {
            var lo = 0, hi = count
            while lo < hi {
                let mid = (lo + hi) / 2
                if key(n, mid) < block { lo = mid + 1 } else { hi = mid }
            }
            return lo < count ? entry(n, lo) : nil
        }
        var ci = childIndex(n, block)
        // The child holding block may have only smaller keys; then the next child starts past it.
        while ci <= count {
            if let e = try ceilingFrom(child(n, ci), block, depth: depth + 1) { return e }
            ci += 1
        }
        return nil
    }

    /// Every extent overlapping [start, end), in order.
    func overlapping(_ start: UInt64, _ end: UInt64) throws -> [Entry] {
        var result: [Entry] = []
        if let f = try floor(start), f.end > start { result.append(f) }
        var next = start
        while let e = try ceiling(next == start ? start : next), e.fileBlock < end {
            if result.last != e { result.append(e) }
            next = e.fileBlock + 1
        }
        return result
    }

    /// Visits every extent in order (used by fsck, stat and freeing).
    func forEach(_ body: (Entry) throws -> Void) throws {
        try visit(inode.pointee.content_off, depth: 0, leaf: { n in
            for i in 0..<Int(n.pointee.key_count) { try body(entry(n, i)) }
        }, node: { _ in })
    }

    /// Visits every node and leaf (fsck).
    func visit(_ off: UInt64, depth: Int, leaf: (UnsafeMutablePointer<pmfs_extent_node>) throws -> Void,
               node visitNode: (UInt64) throws -> Void) throws {
        guard off != 0 else { return }
        guard depth < 64 else { throw PoolError.corrupt("extent tree too deep") }
        try visitNode(off)
        let n = try node(off)
        if n.pointee.is_leaf != 0 { try leaf(n); return }
        for i in 0...Int(n.pointee.key_count) {
            try visit(child(n, i), depth: depth + 1, leaf: leaf, node: visitNode)
        }
    }

    // MARK: changes

    /// Inserts an extent whose key is not present.
    func insert(_ e: Entry, in tx: Transaction) throws {
        precondition(e.length > 0 && e.length <= UInt64(UInt32.max))
        if inode.pointee.content_off == 0 {
            let off = try tx.allocate(size: MemoryLayout<pmfs_extent_node>.size, type: PMFS_T_EXTENT_NODE)
            let n = try node(off)
            n.pointee.is_leaf = 1
            try tx.snapshot(field(inode, \.content_off))
            inode.pointee.content_off = off
        }
        if let (sepKey, right) = try insert(e, into: inode.pointee.content_off, tx: tx, depth: 0) {
            // The root split: grow the tree by one level.
            let off = try tx.allocate(size: MemoryLayout<pmfs_extent_node>.size, type: PMFS_T_EXTENT_NODE)
            let root = try node(off)
            root.pointee.key_count = 1
            keyPtr(root, 0).pointee = sepKey
            childPtr(root, 0).pointee = inode.pointee.content_off
            childPtr(root, 1).pointee = right
            try tx.snapshot(field(inode, \.content_off))
            inode.pointee.content_off = off
        }
        try tx.snapshot(field(inode, \.extent_count))
        inode.pointee.extent_count += 1
    }

    /// Returns (separator key, new right sibling) when `off` split.
    private func insert(_ e: Entry, into off: UInt64, tx: Transaction, depth: Int) throws -> (UInt64, UInt64)? {
        guard depth < 64 else { throw PoolError.corrupt("extent tree too deep") }
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
            let rightOff = try tx.allocate(size: MemoryLayout<pmfs_extent_node>.size, type: PMFS_T_EXTENT_NODE)
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
        let rightOff = try tx.allocate(size: MemoryLayout<pmfs_extent_node>.size, type: PMFS_T_EXTENT_NODE)
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
        let root = inode.pointee.content_off
        guard root != 0 else { throw PoolError.corrupt("removing extent \(block) from an empty tree") }
        let emptied = try remove(block, from: root, tx: tx, depth: 0)
        if emptied {
            try tx.free(root)
            try tx.snapshot(field(inode, \.content_off))
            inode.pointee.content_off = 0
        } else {
            // Collapse a root that is an inner node with a single child.
            var r = try node(inode.pointee.content_off)
            while r.pointee.is_leaf == 0 && r.pointee.key_count == 0 {
                let only = child(r, 0)
                try tx.free(inode.pointee.content_off)
                try tx.snapshot(field(inode, \.content_off))
                inode.pointee.content_off = only
                r = try node(only)
            }
        }
        try tx.snapshot(field(inode, \.extent_count))
        inode.pointee.extent_count.decrementSaturating()
    }

    /// Returns true when the node at `off` became empty (the caller frees it).
    private func remove(_ block: UInt64, from off: UInt64, tx: Transaction, depth: Int) throws -> Bool {
        guard depth < 64 else { throw PoolError.corrupt("extent tree too deep") }
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
        var off = inode.pointee.content_off
        for _ in 0..<64 {
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
        try visit(inode.pointee.content_off, depth: 0, leaf: { _ in }, node: { nodes.append($0) })
        for off in nodes { try tx.free(off) }
        try tx.snapshot(field(inode, \.content_off))
        inode.pointee.content_off = 0
        try tx.snapshot(field(inode, \.extent_count))
        inode.pointee.extent_count = 0
    }
}
