import Glibc
import PMFSData
import PMFSMetadata
import SystemPackage

/// truncate, fallocate, lseek(SEEK_DATA/SEEK_HOLE) and copy_file_range.
extension FileDataTier {
    public struct FallocateMode: OptionSet, Sendable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        public static let keepSize = FallocateMode(rawValue: 0x01)
        public static let punchHole = FallocateMode(rawValue: 0x02)
        public static let zeroRange = FallocateMode(rawValue: 0x10)
    }

    public enum SeekTarget: Sendable { case data, hole }

    /// Sets the size. Shrinking drops cached pages past the end and zeroes the
    /// tail of a partial last block on the device before the pool records the
    /// new size, so a later extension can never uncover old bytes.
    func truncate(_ ino: UInt64, size: UInt64, mtime: Timestamp?) throws {
        guard size <= MetadataStore.maxFileSize else { throw Errno.fileTooLarge }
        try withFile(ino) { f in try locked(f) {
            if size < f.size {
                let keep = (size + blockSize - 1) / blockSize
                dropPages(f, from: keep, to: UInt64.max)
                if size % blockSize != 0 { try zeroInBlock(f, size / blockSize, from: Int(size % blockSize), to: Int(blockSize)) }
            }
            f.size = size
            // The zeroed tail and everything else is written back, then one
            // transaction sets the size and frees the blocks past the end.
            try writeBack(f, flushDevice: false)
            let attributes = try metadata.setattr(ino, AttributeChanges(size: size, mtime: mtime))
            f.persistedSize = size
            f.pendingMtime = nil
            f.currentMtime = attributes.mtime
        } }
    }

    /// Drops the cached pages of blocks [from, to), returning their reservations.
    func dropPages(_ f: FileData, from: UInt64, to: UInt64) {
        for b in cache.cachedBlocks(f, from: from, to: to) {
            cache.drop(f, b)
            if f.reserved.remove(b) != nil { metadata.unreserveBlocks(1) }
        }
    }

    /// Zeroes bytes [from, to) of `block` through the cache (file lock held).
    func zeroInBlock(_ f: FileData, _ block: UInt64, from: Int, to: Int) throws {
        guard from < to else { return }
        // Only blocks with data need zeroing: a hole or unwritten block reads zeros already.
        guard let seg = try metadata.mapBlocks(f.ino, start: block, count: 1).first else { return }
        let cached = cache.lookup(f, block)
        if let c = cached { cache.unpin(c) }
        guard cached != nil || (seg.deviceBlock != nil && !seg.unwritten) else { return }
        let zeros = [UInt8](repeating: 0, count: to - from)
        _ = try zeros.withUnsafeBytes {
            try writeLocked(f, offset: block * blockSize + UInt64(from), from: $0, sync: .none, updateSize: false)
        }
    }

    public func fallocate(_ ino: UInt64, mode: FallocateMode, offset: UInt64, length: UInt64) throws {
        guard length > 0 else { throw Errno.invalidArgument }
        let known: FallocateMode = [.keepSize, .punchHole, .zeroRange]
        guard mode.rawValue & ~known.rawValue == 0 else { throw Errno.notSupported }
        if mode.contains(.punchHole) && (!mode.contains(.keepSize) || mode.contains(.zeroRange)) { throw Errno.notSupported }
        guard offset <= MetadataStore.maxFileSize, length <= MetadataStore.maxFileSize - offset else { throw Errno.fileTooLarge }
        let end = offset + length
        let firstFull = (offset + blockSize - 1) / blockSize, endFull = end / blockSize
        try withFile(ino) { f in try locked(f) {
            if mode.contains(.punchHole) || mode.contains(.zeroRange) {
                // Partial blocks at the edges are zeroed; whole blocks are unmapped.
                let limit = mode.contains(.punchHole) ? min(end, f.size) : end
                if offset < limit {
                    if offset / blockSize == (limit - 1) / blockSize && (offset % blockSize != 0 || limit % blockSize != 0) {
                        try zeroInBlock(f, offset / blockSize, from: Int(offset % blockSize), to: Int((limit - 1) % blockSize) + 1)
                    } else {
                        if offset % blockSize != 0 { try zeroInBlock(f, offset / blockSize, from: Int(offset % blockSize), to: Int(blockSize)) }
                        if limit % blockSize != 0 && limit > firstFull * blockSize {
                            try zeroInBlock(f, limit / blockSize, from: 0, to: Int(limit % blockSize))
                        }
                    }
                }
                if firstFull < endFull {
                    dropPages(f, from: firstFull, to: endFull)
                    try writeBack(f, flushDevice: false)
                    try metadata.punchBlocks(ino, start: firstFull, count: endFull - firstFull)
                    if mode.contains(.zeroRange) {
                        try metadata.allocateBlocks(ino, start: firstFull, count: endFull - firstFull, unwritten: true)
                    }
                }
            } else {
                // Preallocation: blocks for every hole, read as zeros until written.
                try writeBack(f, flushDevice: false)
                let first = offset / blockSize, last = (end - 1) / blockSize
                try metadata.allocateBlocks(ino, start: first, count: last - first + 1, unwritten: true)
            }
            if !mode.contains(.keepSize) && end > f.size {
                f.size = end
                stampWrite(f)
                try writeBack(f, flushDevice: false)
            } else if mode.contains(.punchHole) || mode.contains(.zeroRange) {
                stampWrite(f)
            }
        } }
    }

    /// lseek SEEK_DATA / SEEK_HOLE: data is a written extent or a cached page;
    /// unwritten extents and holes are holes; EOF is a hole. ENXIO past EOF.
    public func seek(_ ino: UInt64, from offset: UInt64, to target: SeekTarget) throws -> UInt64 {
        return try withFile(ino) { f in try locked(f) {
            guard offset < f.size else { throw Errno.noSuchAddressOrDevice }
            let endBlock = (f.size + blockSize - 1) / blockSize
            var block = offset / blockSize
            let cached = cache.cachedBlocks(f, from: block, to: endBlock)   // ascending
            var c = 0
            // The segments cover [block, endBlock) in order. Walk them one by one,
            // block by block only over cached pages (a sparse file may be 2^51 blocks).
            for s in try metadata.mapBlocks(ino, start: block, count: endBlock - block) {
                let end = s.fileBlock + s.length
                if s.deviceBlock != nil && !s.unwritten {
                    if target == .data { return max(offset, s.fileBlock * blockSize) }
                    continue
                }
                // A hole or unwritten extent: data only where a page is cached.
                while c < cached.count && cached[c] < s.fileBlock { c += 1 }
                if target == .data {
                    if c < cached.count && cached[c] < end { return max(offset, cached[c] * blockSize) }
                } else {
                    block = s.fileBlock
                    while c < cached.count && cached[c] == block && block < end { block += 1; c += 1 }
                    if block < end { return max(offset, block * blockSize) }
                }
            }
            if target == .hole { return f.size }
            throw Errno.noSuchAddressOrDevice
        } }
    }

    /// Copies `length` bytes between files (or within one). Whole blocks are
    /// shared (a clone, see `cloneRange`) when both offsets are block-aligned;
    /// what is left is copied through the cache.
    public func copyFileRange(from source: UInt64, offset sourceOffset: UInt64, to target: UInt64, offset targetOffset: UInt64,
                              length: UInt64) throws -> UInt64 {
        if source == target {
            // [s, s+length) and [t, t+length) overlap when |s - t| < length (no sum to overflow).
            let distance = sourceOffset > targetOffset ? sourceOffset - targetOffset : targetOffset - sourceOffset
            if length > 0 && distance < length { throw Errno.invalidArgument }
        }
        var cloned: UInt64 = 0
        // Ranges past the largest file are left to the byte copy, which answers as before (0 or EFBIG).
        let inLimits = sourceOffset <= MetadataStore.maxFileSize && targetOffset <= MetadataStore.maxFileSize
            && length <= MetadataStore.maxFileSize - max(sourceOffset, targetOffset)
        if inLimits && sourceOffset % blockSize == 0 && targetOffset % blockSize == 0 {
            cloned = try cloneRange(from: source, offset: sourceOffset, to: target, offset: targetOffset, length: length)
        }
        guard cloned < length else { return cloned }
        return try cloned + copyBytes(from: source, offset: sourceOffset + cloned, to: target, offset: targetOffset + cloned, length: length - cloned)
    }

    /// Shares the blocks of [sourceOffset, +length) with the target (both offsets
    /// block-aligned) and returns the bytes done: the whole blocks, and the
    /// partial last block too when the range reaches the source's EOF and the
    /// target range ends at or past the target's EOF (the block's bytes past
    /// the source EOF are zeros and stay past the target's new EOF). The rest
    /// is left to copy. Dirty data of both files is written back first; the
    /// target's cached pages of the range are dropped.
    func cloneRange(from source: UInt64, offset sourceOffset: UInt64, to target: UInt64, offset targetOffset: UInt64,
                    length: UInt64) throws -> UInt64 {
        try withFile(source) { s in try withFile(target) { t in
            try withFileLocks(s, t) {
                guard sourceOffset < s.size else { return 0 }
                let available = min(length, s.size - sourceOffset)
                var blocks = available / blockSize
                var bytes = blocks * blockSize
                if available % blockSize != 0 && sourceOffset + available == s.size && targetOffset + available >= t.size {
                    blocks += 1
                    bytes = available
                }
                guard blocks > 0 else { return 0 }
                try writeBack(s, flushDevice: false)
                if t !== s { try writeBack(t, flushDevice: false) }
                let firstTarget = targetOffset / blockSize
                dropPages(t, from: firstTarget, to: firstTarget + blocks)
                let newSize = max(t.size, targetOffset + bytes)
                try metadata.cloneBlocks(from: source, block: sourceOffset / blockSize, to: target, block: firstTarget,
                                         count: blocks, targetSize: newSize)
                t.size = newSize
                t.persistedSize = newSize
                return bytes
            }
        } }
    }

    /// Holds the data locks of two files (one if they are the same), in inode order.
    private func withFileLocks<T>(_ a: FileData, _ b: FileData, _ body: () throws -> T) throws -> T {
        if a === b { return try locked(a, body) }
        let (first, second) = a.ino < b.ino ? (a, b) : (b, a)
        return try locked(first) { try locked(second, body) }
    }

    /// Copies bytes through the cache.
    private func copyBytes(from source: UInt64, offset sourceOffset: UInt64, to target: UInt64, offset targetOffset: UInt64,
                           length: UInt64) throws -> UInt64 {
        let chunk = 1 << 20
        var buffer = [UInt8](repeating: 0, count: chunk)
        var copied: UInt64 = 0
        while copied < length {
            let want = Int(min(UInt64(chunk), length - copied))
            let n = try buffer.withUnsafeMutableBytes { try read(source, offset: sourceOffset + copied, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<want])) }
            if n == 0 { break }
            let w = try buffer.withUnsafeBytes { try write(target, offset: targetOffset + copied, from: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            copied += UInt64(w)
            if w < n { break }
        }
        return copied
    }

    /// For crash tests: stop without writing anything back (as kill -9 would).
    public func abandonForTesting() {
        stopBackgroundWriter()
        let all = takeAllFiles()
        for f in all { locked(f) { for b in cache.cachedBlocks(f, from: 0, to: UInt64.max) { cache.drop(f, b) } } }
    }
}
