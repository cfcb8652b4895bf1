import CPMDK
import PMFSMetadata

/// Pass 1c (format v2): the refcount table of shared data blocks must say
/// exactly how many extents own each block that more than one extent owns.
/// The owners are counted over every kept extent of every file; the table is
/// read with every record and node checked. A damaged table, a wrong count, a
/// record for a block with one owner, or a block owned twice with no record
/// is reported, and the fix rebuilds the table from the counted owners (so a
/// doubly owned block becomes a shared one: both files keep their data, and
/// the engine copies on the next write).
extension CheckRun {
    /// v2 pools count their sharing in the table: pass 1b leaves shared blocks to this pass.
    var sharingIsCounted: Bool { sb.pointee.format_version >= PMFS_FORMAT_VERSION_REFCOUNT }

    struct SharedRun: Equatable {
        var start: UInt64
        var length: UInt64
        var owners: UInt64
        var end: UInt64 { start + length }
    }

    func pass1cRefcounts() {
        guard sharingIsCounted else { return }
        let expected = ownersFromExtents()
        var nodes: [UInt64] = []
        var records: [SharedRun] = []
        var damage: String?
        do { try readRefcountNode(sb.pointee.refcount_root, depth: 0, low: 0, high: UInt64.max, &nodes, &records) } catch {
            damage = "\(error)"
        }
        var pending: [Int] = []
        if let damage {
            pending.append(found(.refcountTable, "refcount table: \(damage)"))
        } else {
            let recorded = Self.merged(records)
            if recorded != expected { pending += reportDifferences(recorded: recorded, expected: expected) }
            if sb.pointee.refcount_records != UInt64(records.count) && pending.isEmpty {
                pending.append(found(.refcountTable, "refcount table: refcount_records is \(sb.pointee.refcount_records), the table holds \(records.count)"))
            }
        }
        fix(pending) { try rebuildRefcountTable(expected, replacing: nodes) }
    }

    /// Runs of device blocks owned by two or more kept extents, merged.
    func ownersFromExtents() -> [SharedRun] {
        var events: [(at: UInt64, delta: Int)] = []
        for list in extents.values {
            for e in list { events.append((e.deviceBlock, 1)); events.append((e.deviceBlock + e.length, -1)) }
        }
        events.sort { $0.at < $1.at }
        var runs: [SharedRun] = []
        var owners = 0
        var i = 0
        while i < events.count {
            let at = events[i].at
            while i < events.count && events[i].at == at { owners += events[i].delta; i += 1 }
            if owners >= 2, i < events.count {
                runs.append(SharedRun(start: at, length: events[i].at - at, owners: UInt64(owners)))
            }
        }
        return Self.merged(runs)
    }

    /// Sorted, with touching runs of equal owners joined (a table may split a run anywhere).
    static func merged(_ runs: [SharedRun]) -> [SharedRun] {
        var result: [SharedRun] = []
        for r in runs.sorted(by: { $0.start < $1.start }) where r.length > 0 {
            if var last = result.last, last.end == r.start, last.owners == r.owners {
                last.length += r.length
                result[result.count - 1] = last
            } else {
                result.append(r)
            }
        }
        return result
    }

    /// Reads one node: it is a refcount node nobody else owns, with a sane key
    /// count, and its records lie in [low, high), in order, in the data area.
    private func readRefcountNode(_ off: UInt64, depth: Int, low: UInt64, high: UInt64,
                                  _ nodes: inout [UInt64], _ records: inout [SharedRun]) throws {
        guard off != 0 else { return }
        guard depth < 64 else { throw PoolError.corrupt("the tree is deeper than 64 levels") }
        if let why = claim(off, PMFS_T_REFCOUNT_NODE, minSize: Self.nodeSize, owner: 0) { throw PoolError.corrupt("node \(why)") }
        nodes.append(off)
        let n: UnsafeMutablePointer<pmfs_extent_node> = try pool.pointer(off)
        let count = Int(n.pointee.key_count)
        guard count < Int(PMFS_EXTENT_FANOUT) else { throw PoolError.corrupt("node at \(off) has \(count) keys") }
        let key = { (i: Int) in element(n, \.keys, i, as: UInt64.self).pointee }
        if n.pointee.is_leaf != 0 {
            for i in 0..<count {
                let e = element(n, \.u, i, as: pmfs_extent.self).pointee
                let start = key(i), length = UInt64(e.length)
                let previousEnd = records.last?.end ?? 0
                guard e.device_block == start, e.flags >= 2, length > 0, start >= max(low, reservedBlocks, previousEnd),
                      start <= dataBlocks, length <= dataBlocks - start, start < high else {
                    throw PoolError.corrupt("record at device block \(start) (device \(e.device_block), \(length) blocks, \(e.flags) owners) is invalid or out of order")
                }
                records.append(SharedRun(start: start, length: length, owners: UInt64(e.flags)))
            }
            return
        }
        for i in 0...count {
            let lo = i == 0 ? low : key(i - 1), hi = i == count ? high : key(i)
            guard lo <= hi else { throw PoolError.corrupt("inner node at \(off) has keys out of order") }
            try readRefcountNode(element(n, \.u, i, as: UInt64.self).pointee, depth: depth + 1, low: lo, high: hi, &nodes, &records)
        }
    }

    /// One problem per differing run (the first 50), by kind.
    private func reportDifferences(recorded: [SharedRun], expected: [SharedRun]) -> [Int] {
        // Compare block by block over the union of both lists' boundaries.
        var cuts = Set<UInt64>()
        for r in recorded + expected { cuts.insert(r.start); cuts.insert(r.end) }
        let points = cuts.sorted()
        func owners(_ list: [SharedRun], _ at: UInt64) -> UInt64 {
            var lo = 0, hi = list.count
            while lo < hi { let mid = (lo + hi) / 2; if list[mid].end <= at { lo = mid + 1 } else { hi = mid } }
            return lo < list.count && list[lo].start <= at ? list[lo].owners : 1
        }
        var pending: [Int] = []
        var more = 0
        for (a, b) in zip(points, points.dropFirst()) {
            let have = owners(recorded, a), want = owners(expected, a)
            guard have != want else { continue }
            guard pending.count < 50 else { more += 1; continue }
            let range = "device blocks \(a)-\(b - 1)"
            if have == 1 {
                pending.append(found(.blocksSharedUnrecorded, "\(range) belong to \(want) extents but have no refcount record"))
            } else {
                pending.append(found(.refcountWrong, "\(range): the refcount table says \(have) owners, the extents give \(want)"))
            }
        }
        if more > 0 { pending.append(found(.refcountWrong, "and \(more) more runs with wrong counts")) }
        return pending
    }

    /// Replaces the table with one holding `runs`; the old nodes are freed.
    private func rebuildRefcountTable(_ runs: [SharedRun], replacing old: [UInt64]) throws {
        var list: [Extent] = []
        for r in runs {
            var at = r.start
            while at < r.end {
                let n = min(r.end - at, UInt64(UInt32.max))
                list.append(Extent(fileBlock: at, deviceBlock: at, length: n, flags: UInt32(min(r.owners, UInt64(UInt32.max)))))
                at += n
            }
        }
        try transaction { tx in
            let root = try buildExtentTree(list, tx, nodeType: PMFS_T_REFCOUNT_NODE)
            for off in old { try tx.free(off) }
            try tx.snapshot(sb)
            sb.pointee.refcount_root = root
            sb.pointee.refcount_records = UInt64(list.count)
        }
        for off in old { objects[off] = nil }
    }
}
