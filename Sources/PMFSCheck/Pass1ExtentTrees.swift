import CPMDK
import PMFSMetadata

/// Pass 1, regular files: the extent B+-tree. Every node must be an extent-node
/// object of this file only, keys ascend and stay inside the range the parent's
/// separators allow, leaves sit at one depth; every extent is non-empty, inside
/// the data area (past the reserved header block), and no two overlap in the
/// file. Damage is repaired by rebuilding the tree from the extents that pass
/// (pass 1b may drop more, so the rebuild happens there).
extension CheckRun {
    static let fanout = Int(PMFS_EXTENT_FANOUT)
    static let nodeSize = MemoryLayout<pmfs_extent_node>.size
    static let maxFileBlock = MetadataStore.maxFileSize / 4096

    func checkExtentTree(_ ino: UInt64, _ p: UnsafeMutablePointer<pmfs_inode>) {
        let tree = walkExtentTree(ino, root: p.pointee.content_off)
        var pending: [Int] = []
        if let first = tree.damage.first {
            let more = tree.damage.count > 1 ? " (and \(tree.damage.count - 1) more)" : ""
            pending.append(found(.extentTree, "file \(ino): extent tree: \(first)\(more)"))
        }
        let valid = tree.extents.compactMap { checkExtent($0, of: ino, &pending) }
        extents[ino] = withoutOverlaps(valid.sorted { $0.fileBlock < $1.fileBlock }, of: ino, &pending)
        extentNodes[ino] = tree.nodes
        if !pending.isEmpty { rebuildProblems[ino] = pending }
    }

    /// What a walk of one file's extent tree found: its extents as stored,
    /// the nodes it claimed, and what is wrong with the tree's shape.
    private struct ExtentTreeWalk {
        var extents: [Extent] = []
        var nodes: [UInt64] = []
        var damage: [String] = []
    }

    /// Walks the tree from `root` (0: none), claiming each node for `ino`.
    private func walkExtentTree(_ ino: UInt64, root: UInt64) -> ExtentTreeWalk {
        var walk = ExtentTreeWalk()
        var leafDepth: Int?

        func visit(_ off: UInt64, _ depth: Int, _ lo: UInt64, _ hi: UInt64?) {
            guard depth < 32 else { walk.damage.append("deeper than 32 levels at node \(off)"); return }
            if let why = claim(off, PMFS_T_EXTENT_NODE, minSize: Self.nodeSize, owner: ino) {
                walk.damage.append("node \(why)")
                return
            }
            walk.nodes.append(off)
            guard let n: UnsafeMutablePointer<pmfs_extent_node> = try? pool.pointer(off) else { return }
            let count = Int(n.pointee.key_count)
            guard count < Self.fanout else { walk.damage.append("node at \(off) holds \(count) keys (at most \(Self.fanout - 1))"); return }
            let key = { (i: Int) in element(n, \.keys, i, as: UInt64.self).pointee }
            for i in 0..<count {
                let k = key(i)
                if (i > 0 && k <= key(i - 1)) || k < lo || (hi.map { k >= $0 } ?? false) {
                    walk.damage.append("keys out of order in node \(off)")
                    break
                }
            }
            if n.pointee.is_leaf != 0 {
                if let d = leafDepth, d != depth { walk.damage.append("leaves at depths \(d) and \(depth)") }
                leafDepth = leafDepth ?? depth
                for i in 0..<count {
                    let e = element(n, \.u, i, as: pmfs_extent.self).pointee
                    walk.extents.append(Extent(fileBlock: key(i), deviceBlock: e.device_block, length: UInt64(e.length), flags: e.flags))
                }
            } else {
                for i in 0...count {
                    let child = element(n, \.u, i, as: UInt64.self).pointee
                    guard child != 0 else { walk.damage.append("node at \(off) has no child \(i)"); continue }
                    visit(child, depth + 1, i == 0 ? lo : max(lo, key(i - 1)), i == count ? hi : key(i))
                }
            }
        }
        if root != 0 { visit(root, 0, 0, nil) }
        return walk
    }

    /// `e` if it is non-empty, inside the largest file and the data area, with
    /// its unknown flags dropped; nil if it must go.
    private func checkExtent(_ extent: Extent, of ino: UInt64, _ pending: inout [Int]) -> Extent? {
        var e = extent
        if e.length == 0 {
            pending.append(found(.extentBad, "file \(ino): empty extent at file block \(e.fileBlock)"))
            return nil
        }
        if e.fileBlock > Self.maxFileBlock || e.length > Self.maxFileBlock - e.fileBlock {
            pending.append(found(.extentBad, "file \(ino): extent at file block \(e.fileBlock) (\(e.length) blocks) lies past the largest file"))
            return nil
        }
        if e.deviceBlock < reservedBlocks || e.deviceBlock >= dataBlocks || e.length > dataBlocks - e.deviceBlock {
            pending.append(found(.extentOutOfRange, "file \(ino): extent at file block \(e.fileBlock) maps device blocks \(e.deviceBlock)+\(e.length), outside the data area \(reservedBlocks)..<\(dataBlocks)"))
            return nil
        }
        if e.flags & ~PMFS_EXTENT_UNWRITTEN != 0 {
            pending.append(found(.extentBad, "file \(ino): extent at file block \(e.fileBlock) has unknown flags 0x\(String(e.flags, radix: 16))"))
            e.flags &= PMFS_EXTENT_UNWRITTEN
        }
        return e
    }

    /// `sorted` (by file block) without each extent that overlaps one kept before it.
    private func withoutOverlaps(_ sorted: [Extent], of ino: UInt64, _ pending: inout [Int]) -> [Extent] {
        var kept: [Extent] = []
        for e in sorted {
            if let last = kept.last, last.fileBlock + last.length > e.fileBlock {
                pending.append(found(.extentFileOverlap, "file \(ino): extent at file block \(e.fileBlock) overlaps the one at \(last.fileBlock) (\(last.length) blocks)"))
                continue
            }
            kept.append(e)
        }
        return kept
    }

    /// Builds a tree holding `list` (sorted, disjoint) bottom-up in `tx`; nodes are
    /// filled to two thirds so the engine's later inserts rarely split at once.
    func buildExtentTree(_ list: [Extent], _ tx: Transaction, nodeType: pmfs_type_num = PMFS_T_EXTENT_NODE) throws -> UInt64 {
        guard !list.isEmpty else { return 0 }
        let perNode = 20
        func groups(_ n: Int) -> [Range<Int>] {
            let g = (n + perNode - 1) / perNode
            let size = (n + g - 1) / g
            return stride(from: 0, to: n, by: size).map { $0..<min($0 + size, n) }
        }
        var level: [(firstKey: UInt64, offset: UInt64)] = []
        for r in groups(list.count) {
            let off = try tx.allocate(size: Self.nodeSize, type: nodeType)
            let n: UnsafeMutablePointer<pmfs_extent_node> = try pool.pointer(off)
            n.pointee.is_leaf = 1
            n.pointee.key_count = UInt32(r.count)
            for (j, i) in r.enumerated() {
                element(n, \.keys, j, as: UInt64.self).pointee = list[i].fileBlock
                element(n, \.u, j, as: pmfs_extent.self).pointee =
                    pmfs_extent(device_block: list[i].deviceBlock, length: UInt32(list[i].length), flags: list[i].flags)
            }
            level.append((list[r.lowerBound].fileBlock, off))
        }
        while level.count > 1 {
            var next: [(firstKey: UInt64, offset: UInt64)] = []
            for r in groups(level.count) {
                let off = try tx.allocate(size: Self.nodeSize, type: nodeType)
                let n: UnsafeMutablePointer<pmfs_extent_node> = try pool.pointer(off)
                n.pointee.key_count = UInt32(r.count - 1)
                for (j, i) in r.enumerated() {
                    element(n, \.u, j, as: UInt64.self).pointee = level[i].offset
                    if j > 0 { element(n, \.keys, j - 1, as: UInt64.self).pointee = level[i].firstKey }
                }
                next.append((level[r.lowerBound].firstKey, off))
            }
            level = next
        }
        return level[0].offset
    }
}
