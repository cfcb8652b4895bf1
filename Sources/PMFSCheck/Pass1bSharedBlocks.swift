import CPMDK
import PMFSMetadata

/// Pass 1b: no device block may belong to two extents, of one file or of two.
/// One sweep over all extents sorted by device block; an extent that starts
/// inside the furthest-reaching earlier one is dropped from its file (the file
/// gets a hole there: fsck has no data device to copy blocks with). Then every
/// file whose extents changed gets its tree rebuilt, and the others have their
/// extent_count and blocks checked.
extension CheckRun {
    func pass1bSharedBlocks() {
        var all: [(device: UInt64, length: UInt64, ino: UInt64, fileBlock: UInt64)] = []
        for (ino, list) in extents {
            for e in list { all.append((e.deviceBlock, e.length, ino, e.fileBlock)) }
        }
        all.sort { ($0.device, $0.ino, $0.fileBlock) < ($1.device, $1.ino, $1.fileBlock) }
        var reach: UInt64 = 0
        var reachOwner: UInt64 = 0
        var drops: [UInt64: Set<UInt64>] = [:]
        // In a v2 pool blocks may be shared: pass 1c checks them against the refcount table.
        for e in all where !sharingIsCounted {
            if e.device < reach {
                let other = reachOwner == e.ino ? "another extent of the same file" : "inode \(reachOwner)"
                let i = found(.blocksShared, "\(describe(e.ino)): device blocks \(e.device)-\(e.device + e.length - 1) (file block \(e.fileBlock)) also belong to \(other)")
                rebuildProblems[e.ino, default: []].append(i)
                drops[e.ino, default: []].insert(e.fileBlock)
            } else {
                reach = e.device + e.length
                reachOwner = e.ino
            }
        }
        for (ino, blocks) in drops { extents[ino]?.removeAll { blocks.contains($0.fileBlock) } }

        for ino in extents.keys.sorted() {
            guard let p = inode(ino) else { continue }
            let kept = extents[ino] ?? []
            let count = UInt64(kept.count)
            let blocks = kept.reduce(0) { $0 + $1.length } * 8
            if let pending = rebuildProblems[ino], !pending.isEmpty {
                fix(pending) {
                    let old = extentNodes[ino] ?? []
                    try transaction { tx in
                        let root = try buildExtentTree(kept, tx)
                        // The old nodes are this file's alone (claimed in pass 1).
                        for off in old { try tx.free(off) }
                        try tx.snapshot(p)
                        p.pointee.content_off = root
                        p.pointee.extent_count = count
                        p.pointee.blocks = blocks
                    }
                    for off in old { objects[off] = nil }
                    extentNodes[ino] = []
                }
                continue
            }
            if p.pointee.extent_count != count {
                found(.extentCount, "file \(ino): extent_count is \(p.pointee.extent_count), the tree holds \(count)") {
                    try update(field(p, \.extent_count)) { $0 = count }
                }
            }
            if p.pointee.blocks != blocks {
                found(.inodeBlocks, "file \(ino): blocks is \(p.pointee.blocks), its extents cover \(blocks) 512-byte units") {
                    try update(field(p, \.blocks)) { $0 = blocks }
                }
            }
        }
    }
}
