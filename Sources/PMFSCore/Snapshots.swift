import PMFSMetadata
import SystemPackage

extension FileDataTier {
    /// Makes `name` in `parent` a snapshot of the tree at `source`: the writer
    /// gate is closed (changes in flight finish, new ones wait), the cached
    /// dirty data of the tree's files is written back, so the copy holds every
    /// write acknowledged before, and the metadata engine copies the tree in
    /// one transaction (`MetadataStore.snapshot`). The source's cached pages
    /// stay valid: its blocks are now shared, and a later write to one is
    /// copied on write as after a clone.
    public func snapshot(_ source: UInt64, into parent: UInt64, name: FileName, readOnly: Bool) throws -> SnapshotSummary {
        try writers.closed {
            // Only files that owe the pool something need a write-back (for the
            // others it does nothing); when none does, as after a quiet spell,
            // the tree is walked once, by the copy, instead of twice.
            let owing = cachedFiles().filter { f in locked(f) { cache.holdsDirtyPages(f) || f.needsCommit } }
            if !owing.isEmpty {
                let tree = Set(try metadata.regularFiles(inTree: source))
                for f in owing where tree.contains(f.ino) {
                    try locked(f) { try writeBack(f, flushDevice: false) }
                }
            }
            return try metadata.snapshot(source, into: parent, name: name, readOnly: readOnly)
        }
    }
}
