import CPMDK
import PMFSMetadata

/// Pass 5: the free-space bitmap must be exactly the reserved blocks plus every
/// kept extent, with the bits past the end of the device set (so no search runs
/// off it). Differences are reported as runs of blocks; the fix rewrites the
/// differing words, a bounded number per transaction.
extension CheckRun {
    func pass5SpaceMap() {
        let expected = expectedBitmap()
        let differing = (0..<wordCount).filter { bitmapWords[$0] != expected[$0] }
        guard !differing.isEmpty else { return }
        let (runs, tailWrong) = wrongRuns(differing, expected: expected)
        var pending = reportRuns(runs)
        if tailWrong {
            pending.append(found(.bitmapTail, "bits past the last block (\(dataBlocks)) are not all set"))
        }
        fix(pending) { try rewriteWords(differing, from: expected) }
    }

    /// A block's bit wrong in the bitmap, gathered into runs of one kind.
    private typealias WrongRun = (start: UInt64, end: UInt64, shouldBeUsed: Bool)

    /// The bitmap as it should be: the reserved blocks, every kept extent, and
    /// the bits past the device's end. Also counts the used blocks.
    private func expectedBitmap() -> [UInt64] {
        var expected = [UInt64](repeating: 0, count: wordCount)
        func set(_ start: UInt64, _ length: UInt64) {
            for (w, mask, _) in BitmapRun(start: start, length: length) { expected[w] |= mask }
        }
        set(0, reservedBlocks)
        var used: UInt64 = 0
        for list in extents.values {
            for e in list {
                set(e.deviceBlock, e.length)
                used += e.length
            }
        }
        usedBlocks = used
        if dataBlocks % 64 != 0 { expected[wordCount - 1] |= ~((1 << (dataBlocks % 64)) - 1) }
        return expected
    }

    /// Runs of blocks whose bit is wrong in the `differing` words, by kind; and
    /// whether any bit past the device's end is wrong.
    private func wrongRuns(_ differing: [Int], expected: [UInt64]) -> (runs: [WrongRun], tailWrong: Bool) {
        var runs: [WrongRun] = []
        var tailWrong = false
        for w in differing {
            var diff = bitmapWords[w] ^ expected[w]
            while diff != 0 {
                let bit = UInt64(diff.trailingZeroBitCount)
                diff &= diff - 1
                let b = UInt64(w) * 64 + bit
                if b >= dataBlocks { tailWrong = true; continue }
                let shouldBeUsed = expected[w] & (1 << bit) != 0
                if let last = runs.last, last.end == b, last.shouldBeUsed == shouldBeUsed {
                    runs[runs.count - 1].end = b + 1
                } else {
                    runs.append((b, b + 1, shouldBeUsed))
                }
            }
        }
        return (runs, tailWrong)
    }

    /// One problem per run for the first 20 runs, one for the rest together.
    private func reportRuns(_ runs: [WrongRun]) -> [Int] {
        var pending: [Int] = []
        let shown = 20
        for r in runs.prefix(shown) {
            let range = r.end - r.start == 1 ? "block \(r.start)" : "blocks \(r.start)-\(r.end - 1)"
            if r.shouldBeUsed {
                let owner = r.start < reservedBlocks ? "reserved" : owners(of: r.start).map { "used by inode \($0)" }.joined(separator: ", ")
                pending.append(found(.bitmapUsedMarkedFree, "\(range) \(r.end - r.start == 1 ? "is" : "are") \(owner) but marked free"))
            } else {
                pending.append(found(.bitmapFreeMarkedUsed, "\(range) \(r.end - r.start == 1 ? "is marked in use but belongs" : "are marked in use but belong") to no file"))
            }
        }
        if runs.count > shown {
            let rest = runs.dropFirst(shown)
            let blocks = rest.reduce(0) { $0 + $1.end - $1.start }
            let code: ProblemCode = rest.contains { $0.shouldBeUsed } ? .bitmapUsedMarkedFree : .bitmapFreeMarkedUsed
            pending.append(found(code, "and \(rest.count) more runs (\(blocks) blocks) marked wrongly"))
        }
        return pending
    }

    /// Writes the expected value into each differing word, a bounded number per transaction.
    private func rewriteWords(_ differing: [Int], from expected: [UInt64]) throws {
        var i = 0
        while i < differing.count {
            let batch = differing[i..<min(i + 4096, differing.count)]
            try transaction { tx in
                for w in batch {
                    try tx.snapshot(bitmapWords + w)
                    bitmapWords[w] = expected[w]
                }
            }
            i += batch.count
        }
    }

    /// Files with an extent covering `block` (for messages).
    private func owners(of block: UInt64) -> [UInt64] {
        extents.compactMap { ino, list in
            list.contains { $0.deviceBlock <= block && block < $0.deviceBlock + $0.length } ? ino : nil
        }.sorted()
    }
}
