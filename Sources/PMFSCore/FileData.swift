import PMFSConcurrency
import PMFSMetadata

/// DRAM state of one regular file's data: its cached pages and what write-back
/// still owes the pool. `lock` serializes data operations on the file.
final class FileData: @unchecked Sendable {
    let ino: UInt64
    /// The inode's generation when this state was made: the number alone may
    /// name a newer file once this one is freed.
    let generation: UInt64
    let lock = Lock()

    /// Operations using this state now (guarded by the file-system's files lock).
    var users = 0
    /// The inode was freed: nothing may be written back (files lock).
    var dead = false

    // Guarded by the cache lock.
    var pages: [UInt64: Int32] = [:]
    var dirtyBlocks: Set<UInt64> = []

    // Guarded by `lock`.
    /// The size readers see: includes writes not yet written back.
    var size: UInt64
    /// The size last committed to the pool.
    var persistedSize: UInt64
    /// mtime of writes not yet committed.
    var pendingMtime: Timestamp?
    /// The mtime the file has now when known here (read when the record was
    /// made, or given by a write since), nil when something else set it.
    var currentMtime: Timestamp?
    /// Whether a getattr may have shown `currentMtime` (assumed for a new
    /// record): the next write must then change it, to the nanosecond.
    var mtimeQueried = true
    /// Dirty blocks that hold a space reservation (they fill holes).
    var reserved: Set<UInt64> = []
    /// When the oldest dirty page was dirtied (monotonic ns), 0 if clean.
    var dirtySince: UInt64 = 0
    /// Sequential read detection and the read-ahead window, in blocks.
    var lastReadEnd: UInt64 = UInt64.max
    var readAheadBlocks: UInt64 = 0
    /// Scratch for the extent map of the blocks a read or write touches,
    /// reused so that mapping allocates nothing once it has grown.
    var mapping: [ExtentSegment] = []
    /// The record of this file's write-back, reused by each (file lock holder only).
    lazy var pendingWriteBack = FileDataTier.PendingWriteBack(self)

    // Guarded by `writeBackEnd`.
    /// A write-back started under `lock` whose device I/O and transaction run
    /// on the background writer without it (`FileDataTier.startWriteBack`).
    var writeBackInFlight = false
    /// It committed; the next holder of `lock` applies that to the fields above.
    var writeBackToSettle = false
    let writeBackEnd = ConditionLock()

    init(ino: UInt64, generation: UInt64, size: UInt64, mtime: Timestamp? = nil) {
        self.ino = ino
        self.generation = generation
        self.size = size
        self.persistedSize = size
        self.currentMtime = mtime
    }

    var needsCommit: Bool { size != persistedSize || pendingMtime != nil }
}
