import CoreMetrics
import Dispatch
import Glibc
import Logging
import PMFSConcurrency
import PMFSData
import PMFSMetadata
import Synchronization
import SystemPackage

/// The file-data tier: file contents (the write-back cache, write-back,
/// fsync and its groups) over the metadata store and the data device, and
/// the one door to a file's attributes (a cached size and mtime win).
///
/// Writes land in the write-back cache; a write into a hole reserves device
/// space at once (ENOSPC is reported then, never after the write was
/// acknowledged). Write-back, by fsync, by age, by dirty ratio or on shutdown,
/// writes the dirty blocks (claiming blocks for holes, adjacent pages as one
/// vectored write), flushes the device when new blocks or sizes must be
/// committed, and then commits the extent map, size and mtime in one pmemobj
/// transaction. fsync therefore costs the data writes, one device flush and one
/// transaction. See design/architecture.md for what survives a crash.
public final class FileDataTier: @unchecked Sendable {
    public struct Options: Sendable {
        /// Hard limit of cached file data.
        public var cacheBytes: Int = 256 << 20
        /// false: write-through (every write goes to the device at once), for comparison.
        public var writeBack: Bool = true
        /// Dirty data older than this is written back in the background.
        public var writeBackAgeMilliseconds: Int = 5000
        /// Background write-back starts above this share of dirty frames.
        public var dirtyRatio: Double = 0.5
        /// Above the dirty ratio, a writer with this many dirty pages (1 MiB)
        /// starts their write-back, which goes on while it writes on.
        public var writeBackStartPages = 256
        /// Largest read-ahead window, in blocks.
        public var maxReadAheadBlocks: UInt64 = 256
        /// The write-back timer waits for `startBackgroundWriter()`: pmfsd starts
        /// it after its sandbox, so that libdispatch's threads (which block every
        /// signal, so cannot be asked to drop privileges) are made sandboxed.
        public var backgroundWriterLater = false
        public init() {}
    }

    public enum SyncMode: Sendable { case none, data, all }

    public let metadata: MetadataStore
    /// Every change from a FUSE session passes it; a snapshot closes it.
    public let writers = WriterGate()
    public let device: DataDevice
    let cache: PageCache
    let options: Options
    let logger: Logger
    let blockSize: UInt64
    private let filesLock = Lock()
    private var files: [UInt64: FileData] = [:]
    /// States of freed inodes whose pages are still to be dropped.
    private var deadFiles: [FileData] = []
    /// Freed inodes counted by bucket of inode number (files lock), so a state
    /// is never made from the attributes of a file freed meanwhile.
    private static let releaseBuckets = 64
    private var releases = [UInt64](repeating: 0, count: FileDataTier.releaseBuckets)
    private var flusher: DispatchSourceTimer?
    private let flusherQueue = DispatchQueue(label: "pmfs.writeback")
    private let fsyncs: CoreMetrics.Counter
    private let cacheCounters: CacheCounters
    /// fsyncs asked for, counted with the metrics registry on or off (pmfsctl stats).
    private let fsyncCount = Atomic<UInt64>(0)
    /// Tables of finished `fsync(group:)` calls, for the next ones.
    private var spareFsyncGroupTables: [FsyncGroupTables] = []
    private let fsyncGroupTablesLock = Lock()
    /// Set while the background writer's queue may be used (after
    /// `startBackgroundWriter`, until `stopBackgroundWriter`).
    private let backgroundWriterStarted = Atomic<Bool>(false)
    /// Write-backs started with their I/O off the file lock (`startWriteBack`), for the tests.
    let writeBacksStartedInFlight = Atomic<Int>(0)
    /// The most blocks one pass of a read pins (the largest FUSE read, 1 MiB,
    /// in one pass unless unaligned); its frame numbers live on the stack.
    static let readChunkBlocks = 256

    public init(metadata: MetadataStore, device: DataDevice, options: Options = Options(),
                logger: Logger = Logger(label: "pmfs.core"), metrics: MetricsFactory = NOOPMetricsHandler.instance) throws {
        fsyncs = CoreMetrics.Counter(label: "pmfs_fsyncs_total", factory: metrics)
        cacheCounters = CacheCounters(metrics)
        self.metadata = metadata
        self.device = device
        self.options = options
        self.logger = logger
        blockSize = UInt64(metadata.blockSize)
        cache = PageCache(bytes: options.cacheBytes)
        metadata.onInodeReleased { [weak self] ino in self?.inodeReleased(ino) }
        if !options.backgroundWriterLater { startBackgroundWriter() }
    }

    /// Starts the write-back timer (once), when `Options.backgroundWriterLater` put it off.
    public func startBackgroundWriter() {
        guard flusher == nil else { return }
        let timer = DispatchSource.makeTimerSource(queue: flusherQueue)
        timer.schedule(deadline: .now() + .milliseconds(200), repeating: .milliseconds(200))
        timer.setEventHandler { [weak self] in self?.backgroundWriteBack() }
        timer.resume()
        flusher = timer
        backgroundWriterStarted.store(true, ordering: .releasing)
    }

    /// Writes everything back and stops the background writer.
    public func shutdown() throws {
        stopBackgroundWriter()
        reapDeadFiles()
        try syncAll()
    }

    func stopBackgroundWriter() {
        backgroundWriterStarted.store(false, ordering: .releasing)
        flusher?.cancel()
        flusher = nil
        flusherQueue.sync {}   // and every write-back in flight has ended
    }

    func takeAllFiles() -> [FileData] {
        filesLock.withLock {
            let all = Array(files.values)
            files.removeAll()
            return all
        }
    }

    // MARK: per-file state

    /// Runs `body` with the file's state, created on first use. The state is
    /// marked in use meanwhile, so the background writer never prunes it from
    /// under an operation (two states for one file would disagree on its size).
    func withFile<T>(_ ino: UInt64, _ body: (FileData) throws -> T) throws -> T {
        let f = try acquireFile(ino)
        defer { filesLock.withLock { f.users -= 1 } }
        return try body(f)
    }

    private func acquireFile(_ ino: UInt64) throws -> FileData {
        while true {
            let (existing, releasesSeen) = filesLock.withLock { () -> (FileData?, UInt64) in
                let f = files[ino]
                f?.users += 1
                return (f, releases[releaseBucket(ino)])
            }
            if let f = existing { return f }
            let attrs = try metadata.getattr(ino)
            guard attrs.type == .regular else { throw attrs.type == .directory ? Errno.isDirectory : Errno.invalidArgument }
            // A size past the largest a file can have is damage (fsck's to mend):
            // refused here, every offset computed from the size below stays in range.
            guard attrs.size <= MetadataStore.maxFileSize else { throw Errno.ioError }
            if let f = filesLock.withLock({ () -> FileData? in
                if let f = files[ino] { f.users += 1; return f }
                // An inode of this bucket was freed while the attributes were read:
                // they may be of a file that is gone, so they are read again.
                guard releases[releaseBucket(ino)] == releasesSeen else { return nil }
                let f = FileData(ino: ino, generation: attrs.generation, size: attrs.size, mtime: attrs.mtime)
                files[ino] = f
                f.users += 1
                return f
            }) { return f }
        }
    }

    @inline(__always)
    private func releaseBucket(_ ino: UInt64) -> Int { Int(ino % UInt64(Self.releaseBuckets)) }

    /// The errno for a failed read of `ino`'s blocks. Pool damage (a bad extent
    /// map) and refused or failed device transfers are EIO, logged once here
    /// naming the inode; errnos pass as they are.
    func readFailure(_ ino: UInt64, _ error: Error) -> Errno {
        if let e = error as? Errno { return e }
        switch error {
        case let e as PoolError: logger.error("reading inode \(ino): \(e)")
        default: logger.error("reading inode \(ino): \(error)")
        }
        return .ioError
    }

    /// For tests: the state of a file, if any.
    func fileData(_ ino: UInt64) throws -> FileData { try withFile(ino) { $0 } }

    /// Every file with cached state, taken at once (the files lock once, not per file).
    func cachedFiles() -> [FileData] { filesLock.withLock { Array(files.values) } }

    /// Forgets states of idle files that have nothing cached and nothing owed.
    private func pruneIdleFiles() {
        let idle = filesLock.withLock { files.values.filter { $0.users == 0 } }
        for f in idle {
            guard f.lock.tryLock() else { continue }
            let empty = settleWriteBack(f, waiting: false) && !cache.holdsPages(f) && !f.needsCommit && f.reserved.isEmpty
            f.lock.unlock()
            guard empty else { continue }
            filesLock.withLock {
                // Still idle, and nobody took it in the meantime.
                if f.users == 0, files[f.ino] === f { files[f.ino] = nil }
            }
        }
    }

    /// Forgets a file whose inode was freed. Called by the engine with its locks
    /// held, so it only unhooks the state; the background writer drops the
    /// pages and returns the reservations later.
    func inodeReleased(_ ino: UInt64) {
        filesLock.withLock {
            releases[releaseBucket(ino)] &+= 1
            if let f = files.removeValue(forKey: ino) { markDeadLocked(f) }
        }
    }

    private func markDeadLocked(_ f: FileData) {
        guard !f.dead else { return }
        f.dead = true
        deadFiles.append(f)
    }

    /// A state whose inode turned out to be gone (files lock taken here).
    private func forgetDeadFile(_ f: FileData) {
        filesLock.withLock {
            if files[f.ino] === f { files[f.ino] = nil }
            markDeadLocked(f)
        }
    }

    /// Drops what dead files still hold in the cache and returns their space
    /// reservations. With `waiting` false, a file whose lock is taken (another
    /// thread holds it, maybe while waiting for ours) stays for the next reap.
    private func reapDeadFiles(waiting: Bool = true) {
        let dead = filesLock.withLock { () -> [FileData] in
            let all = deadFiles
            deadFiles.removeAll()
            return all
        }
        var busy: [FileData] = []
        for f in dead {
            if waiting { f.lock.lock() } else if !f.lock.tryLock() { busy.append(f); continue }
            guard settleWriteBack(f, waiting: waiting) else { f.lock.unlock(); busy.append(f); continue }
            for b in cache.cachedBlocks(f, from: 0, to: UInt64.max) { cache.drop(f, b) }
            metadata.unreserveBlocks(UInt64(f.reserved.count))
            f.reserved.removeAll()
            f.lock.unlock()
        }
        if !busy.isEmpty { filesLock.withLock { deadFiles += busy } }
    }

    /// Reserves one block for a write into a hole. When space looks exhausted,
    /// reservations of freed files not yet reaped are returned first: a loop of
    /// write and unlink must not see ENOSPC while the space is only waiting.
    private func reserveBlock() throws {
        do { try metadata.reserveBlocks(1) } catch Errno.noSpace {
            reapDeadFiles(waiting: false)
            try metadata.reserveBlocks(1)
        }
    }

    /// Attributes as readers should see them: size, mtime and blocks include
    /// cached writes not yet written back.
    public func getattr(_ ino: UInt64) throws -> InodeAttributes {
        var a = try metadata.getattr(ino)
        if a.type == .regular, let f = filesLock.withLock({ files[ino] }) {
            f.lock.withLock {
                settleWriteBack(f, waiting: false)
                a.size = f.size
                if let m = f.pendingMtime { a.mtime = m; a.ctime = max(a.ctime, m) }
                f.mtimeQueried = true
                a.blocks = a.blocks.addingClamped(UInt64(f.reserved.count) * (blockSize / 512))
            }
        }
        return a
    }

    /// setattr with size changes going through the cache (truncate).
    public func setattr(_ ino: UInt64, _ changes: AttributeChanges) throws -> InodeAttributes {
        var rest = changes
        if let size = changes.size {
            try truncate(ino, size: size, mtime: changes.mtime)
            rest.size = nil
        }
        if rest.mode != nil || rest.uid != nil || rest.gid != nil || rest.atime != nil || rest.mtime != nil || rest.ctime != nil || rest.flags != nil {
            if rest.mtime != nil, let f = filesLock.withLock({ files[ino] }) {
                // An explicit mtime wins over one a pending write-back would commit.
                locked(f) { f.pendingMtime = nil; f.currentMtime = nil }
            }
            _ = try metadata.setattr(ino, rest)
        }
        return try getattr(ino)
    }

    // MARK: frames

    /// A pinned frame for `block` of `f`, making room if the cache is full of
    /// dirty pages: first by writing back this file, then others, then waiting.
    private func frame(_ f: FileData, _ block: UInt64, forWrite: Bool) throws -> Int32 {
        if let frame = cache.insert(f, block) { return frame }
        let start = DispatchTime.now().uptimeNanoseconds
        defer { cacheCounters.throttled(write: forWrite, since: start) }
        var attempts = 0
        while true {
            if attempts > 0, let frame = cache.insert(f, block) { return frame }
            attempts += 1
            // A write-back of this file in flight frees frames when it ends.
            if attempts == 1 && !settleWriteBack(f, waiting: false) {
                settleWriteBack(f, waiting: true)
                continue
            }
            if !f.dirtyBlocks.isEmpty && attempts <= 2 {
                try writeBack(f, flushDevice: false)
                continue
            }
            if writeBackOthers(except: f) { continue }
            cache.waitForFrames()
            if attempts > 10_000 { throw Errno.noMemory }
        }
    }

    // MARK: read

    /// Reads up to `buffer.count` bytes at `offset`; returns bytes read (0 at EOF).
    public func read(_ ino: UInt64, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try read(ino, offset: offset, into: ScatterWriter(buffer))
    }

    /// Reads into scattered buffers, in order (a guest's pages): the cache is
    /// copied straight into them. Returns bytes read (0 at EOF).
    public func read(_ ino: UInt64, offset: UInt64, into segments: [UnsafeMutableRawBufferPointer]) throws -> Int {
        try read(ino, offset: offset, into: ScatterWriter(segments))
    }

    private func read(_ ino: UInt64, offset: UInt64, into destination: ScatterWriter) throws -> Int {
        let capacity = destination.count
        return try withFile(ino) { f in try f.lock.withLock {
            // Beside a write-back in flight: its pages are cached and do not change.
            settleWriteBack(f, waiting: false)
            guard offset < f.size, capacity > 0 else { return 0 }
            var out = destination
            let end = min(f.size, offset + UInt64(capacity))
            let firstBlock = offset / blockSize, lastBlock = (end - 1) / blockSize
            // Sequential reads grow the read-ahead window.
            if offset == f.lastReadEnd {
                f.readAheadBlocks = min(max(f.readAheadBlocks * 2, 8), options.maxReadAheadBlocks)
            } else {
                f.readAheadBlocks = 0
            }
            f.lastReadEnd = end
            let eofBlock = (f.size + blockSize - 1) / blockSize
            // Pin at most a quarter of the cache at a time, so a large read on a
            // small cache proceeds chunk by chunk instead of waiting for frames;
            // and at most `readChunkBlocks`, the size of the stack scratch below.
            let chunkBlocks = UInt64(min(max(1, cache.frameCount / 4), Self.readChunkBlocks))
            var copied = 0
            var position = offset
            var chunkStart = firstBlock
            try withUnsafeTemporaryAllocation(of: Int32.self, capacity: Self.readChunkBlocks) { frames in
                while chunkStart <= lastBlock {
                    let chunkEnd = min(lastBlock + 1, chunkStart + chunkBlocks)
                    let fetchEnd = chunkEnd == lastBlock + 1 ? min(eofBlock, chunkEnd + f.readAheadBlocks) : chunkEnd
                    let chunk = UnsafeMutableBufferPointer(rebasing: frames[0..<Int(chunkEnd - chunkStart)])
                    try loadBlocks(f, from: chunkStart, to: chunkEnd, readAheadTo: fetchEnd, into: chunk)
                    let stop = min(end, chunkEnd * blockSize)
                    while position < stop {
                        let b = position / blockSize
                        let within = Int(position % blockSize)
                        let n = Int(min(blockSize - UInt64(within), stop - position))
                        let fr = chunk[Int(b - chunkStart)]
                        out.put(fr >= 0 ? UnsafeRawPointer(cache.memory(fr) + within) : nil, n)
                        copied += n
                        position += UInt64(n)
                    }
                    for fr in chunk where fr >= 0 { cache.unpin(fr) }
                    chunkStart = chunkEnd
                }
            }
            if !options.writeBack { dropClean(f) }
            return copied
        } }
    }

    /// Reads a list of buffers in order (one buffer is kept apart from the
    /// array, so that wrapping it allocates nothing).
    struct GatherReader {
        private let single: UnsafeRawBufferPointer?
        private let segments: [UnsafeRawBufferPointer]
        let count: Int
        var index = 0, within = 0
        init(_ segments: [UnsafeRawBufferPointer]) {
            single = nil
            self.segments = segments
            count = segments.reduce(0) { $0 + $1.count }
        }
        init(_ one: UnsafeRawBufferPointer) {
            single = one
            segments = []
            count = one.count
        }
        private var segmentCount: Int { single == nil ? segments.count : 1 }

        mutating func take(into destination: UnsafeMutableRawPointer, _ count: Int) {
            var done = 0
            while done < count && index < segmentCount {
                let s = single ?? segments[index]
                let n = min(s.count - within, count - done)
                if n > 0 { (destination + done).copyMemory(from: s.baseAddress! + within, byteCount: n) }
                done += n
                within += n
                if within == s.count { index += 1; within = 0 }
            }
        }
    }

    /// Fills a list of buffers in order (one buffer kept apart, as above).
    struct ScatterWriter {
        private let single: UnsafeMutableRawBufferPointer?
        private let segments: [UnsafeMutableRawBufferPointer]
        let count: Int
        var index = 0, within = 0
        init(_ segments: [UnsafeMutableRawBufferPointer]) {
            single = nil
            self.segments = segments
            count = segments.reduce(0) { $0 + $1.count }
        }
        init(_ one: UnsafeMutableRawBufferPointer) {
            single = one
            segments = []
            count = one.count
        }
        private var segmentCount: Int { single == nil ? segments.count : 1 }

        /// Copies `count` bytes from `source`, or zeros when it is nil.
        mutating func put(_ source: UnsafeRawPointer?, _ count: Int) {
            var done = 0
            while done < count && index < segmentCount {
                let s = single ?? segments[index]
                let n = min(s.count - within, count - done)
                if let source { (s.baseAddress! + within).copyMemory(from: source + done, byteCount: n) } else { memset(s.baseAddress! + within, 0, n) }
                done += n
                within += n
                if within == s.count { index += 1; within = 0 }
            }
        }
    }

    /// Pins frames for blocks [from, to) into `frames` (-1 for holes and
    /// unwritten blocks that are not cached), reading missing mapped blocks
    /// from the device; also reads ahead (unpinned) up to `readAheadTo`.
    /// Until the reads complete, -1 in `frames` marks a block not cached.
    /// File lock held.
    private func loadBlocks(_ f: FileData, from: UInt64, to: UInt64, readAheadTo: UInt64,
                            into frames: UnsafeMutableBufferPointer<Int32>) throws {
        precondition(frames.count == Int(to - from))
        let missing = lookUpCached(f, from: from, into: frames)
        let aheadStart = to
        if missing == nil && readAheadTo <= aheadStart { return }
        var plan = ReadPlan()
        do {
            let spanStart = missing?.lowerBound ?? aheadStart
            let spanEnd = max(missing?.upperBound ?? 0, readAheadTo)
            try metadata.mapBlocks(f.ino, start: spanStart, count: spanEnd - spanStart, into: &f.mapping)
            for seg in f.mapping {
                guard let dev = seg.deviceBlock, !seg.unwritten else { continue }
                try planReads(f, seg, device: dev, from: from, aheadStart: aheadStart, frames: frames, into: &plan)
            }
            try device.perform(plan.requests)
            for (b, fr) in plan.readFrames {
                if b < to { frames[Int(b - from)] = fr } else { cache.unpin(fr) }
            }
        } catch {
            dropFailedReads(f, from: from, frames: frames, pinned: plan.pinned)
            throw readFailure(f.ino, error)
        }
    }

    /// Fills `frames` with the cached (pinned) frames of blocks `from...`, -1
    /// for the missing ones; returns the span from the first missing block to
    /// past the last, nil if all are cached.
    private func lookUpCached(_ f: FileData, from: UInt64, into frames: UnsafeMutableBufferPointer<Int32>) -> Range<UInt64>? {
        var firstMissing: UInt64?, lastMissing: UInt64 = 0
        var misses = 0
        for i in frames.indices {
            let b = from + UInt64(i)
            if let fr = cache.lookup(f, b) {
                frames[i] = fr
            } else {
                frames[i] = -1
                if firstMissing == nil { firstMissing = b }
                lastMissing = b
                misses += 1
            }
        }
        if misses < frames.count { cacheCounters.hits.increment(by: frames.count - misses) }
        if misses > 0 { cacheCounters.misses.increment(by: misses) }
        return firstMissing.map { $0..<(lastMissing + 1) }
    }

    /// The reads of one mapped extent: its missing blocks, and those past
    /// `aheadStart` (read-ahead), as runs of at most 256 device-contiguous pages.
    private func planReads(_ f: FileData, _ seg: ExtentSegment, device dev: UInt64, from: UInt64, aheadStart: UInt64,
                           frames: UnsafeMutableBufferPointer<Int32>, into plan: inout ReadPlan) throws {
        for b in seg.fileBlock..<(seg.fileBlock + seg.length) {
            let isAhead = b >= aheadStart
            guard isAhead || frames[Int(b - from)] == -1 else { plan.endRun(blockSize); continue }
            let fr: Int32
            if isAhead {
                // Read-ahead never waits for frames: a block cached already, or
                // no frame free, ends it here.
                guard let got = cache.insert(f, b, onlyIfAbsent: true) else { plan.endRun(blockSize); continue }
                fr = got
            } else {
                fr = try frame(f, b, forWrite: false)
            }
            plan.add(block: b, device: dev + (b - seg.fileBlock), frame: fr, memory: cache.memory(fr), blockSize: blockSize)
        }
        plan.endRun(blockSize)
    }

    /// After a failed read: pages whose read failed must not stay cached with
    /// garbage in them, and every pin is let go.
    private func dropFailedReads(_ f: FileData, from: UInt64, frames: UnsafeMutableBufferPointer<Int32>, pinned: [Int32]) {
        for fr in pinned { cache.unpin(fr) }
        for (i, fr) in frames.enumerated() where fr == -1 {
            let b = from + UInt64(i)
            if f.pages[b] != nil, !cache.isDirty(f, b) { cache.drop(f, b) }
        }
        for fr in frames where fr >= 0 { cache.unpin(fr) }
    }

    /// Write-through: drops the file's clean pages (none may be in flight).
    private func dropClean(_ f: FileData) {
        settleWriteBack(f, waiting: true)
        for b in cache.cachedBlocks(f, from: 0, to: UInt64.max) where !cache.isDirty(f, b) { cache.drop(f, b) }
    }

    // MARK: write

    /// Writes `data` at `offset`; returns the bytes written. With `sync`, the
    /// data (and, for .all, the metadata) is durable when this returns (O_SYNC, O_DSYNC).
    public func write(_ ino: UInt64, offset: UInt64, from data: UnsafeRawBufferPointer, sync: SyncMode = .none) throws -> Int {
        try write(ino, offset: offset, from: GatherReader(data), sync: sync)
    }

    /// Writes scattered buffers, in order, as one write (a guest's pages go
    /// straight into the cache).
    public func write(_ ino: UInt64, offset: UInt64, from segments: [UnsafeRawBufferPointer], sync: SyncMode = .none) throws -> Int {
        try write(ino, offset: offset, from: GatherReader(segments), sync: sync)
    }

    private func write(_ ino: UInt64, offset: UInt64, from source: GatherReader, sync: SyncMode) throws -> Int {
        let count = source.count
        guard count > 0 else { return 0 }
        guard offset <= MetadataStore.maxFileSize, UInt64(count) <= MetadataStore.maxFileSize - offset else { throw Errno.fileTooLarge }
        return try withFile(ino) { f in try f.lock.withLock { try writeLocked(f, offset: offset, from: source, sync: sync, updateSize: true) } }
    }

    func writeLocked(_ f: FileData, offset: UInt64, from data: UnsafeRawBufferPointer, sync: SyncMode, updateSize: Bool) throws -> Int {
        try writeLocked(f, offset: offset, from: GatherReader(data), sync: sync, updateSize: updateSize)
    }

    /// The body of `write`, with the file lock held. Zeroing (truncate, punch)
    /// passes `updateSize: false`: it changes bytes, not the size.
    func writeLocked(_ f: FileData, offset: UInt64, from data: GatherReader, sync: SyncMode, updateSize: Bool) throws -> Int {
        let ino = f.ino
        var source = data
        let end = offset + UInt64(source.count)
        var written = 0
        do {
            let firstBlock = offset / blockSize, lastBlock = (end - 1) / blockSize
            // Pages of a write-back in flight must not change under its I/O;
            // none can start meanwhile (that takes the file lock).
            waitForWriteBack(of: f, touching: firstBlock...lastBlock)
            try metadata.mapBlocks(ino, start: firstBlock, count: lastBlock - firstBlock + 1, into: &f.mapping)
            var position = offset
            for seg in f.mapping {
                for b in seg.fileBlock..<(seg.fileBlock + seg.length) {
                    let within = Int(position % blockSize)
                    let n = Int(min(blockSize - UInt64(within), end - position))
                    let fullBlock = within == 0 && n == Int(blockSize)
                    // A write into a hole or a shared block (copied on write) needs
                    // space promised before it is accepted.
                    let needsReservation = (seg.deviceBlock == nil || seg.shared) && !f.reserved.contains(b)
                        && !(!seg.shared && cache.isDirty(f, b))
                    if needsReservation {
                        do { try reserveBlock() } catch {
                            if written > 0 { return try finishWrite(f, written: written, end: position, sync: sync, updateSize: updateSize) }
                            throw error
                        }
                    }
                    let fr: Int32
                    if let cached = cache.lookup(f, b) {
                        fr = cached
                    } else {
                        do { fr = try frame(f, b, forWrite: true) } catch {
                            if needsReservation { metadata.unreserveBlocks(1) }
                            throw error
                        }
                        if !fullBlock {
                            // Read-modify-write of a partial block: fetch what is there.
                            if let dev = seg.deviceBlock, !seg.unwritten, b * blockSize < f.size {
                                do {
                                    try device.perform([BlockIORequest(kind: .read, buffer: cache.memory(fr), length: Int(blockSize),
                                                                              offset: (dev + (b - seg.fileBlock)) * blockSize)])
                                } catch {
                                    cache.unpin(fr)
                                    cache.drop(f, b)
                                    if needsReservation { metadata.unreserveBlocks(1) }
                                    throw readFailure(f.ino, error)
                                }
                            } else {
                                memset(cache.memory(fr), 0, Int(blockSize))
                            }
                        }
                    }
                    source.take(into: cache.memory(fr) + within, n)
                    if needsReservation { f.reserved.insert(b) }
                    if cache.markDirty(fr) { f.dirtySince = monotonicNanoseconds() }
                    cache.unpin(fr)
                    written += n
                    position += UInt64(n)
                }
            }
        }
        return try finishWrite(f, written: written, end: end, sync: sync, updateSize: updateSize)
    }

    /// The mtime a write gives `f`, as Linux stamps writes: the clock tick,
    /// so writes within one tick leave it as it is and an fsync after them
    /// has no mtime to commit (no transaction, as ext4 commits no journal);
    /// but after a getattr may have shown the current one, a time to the
    /// nanosecond and later than it, so that change is seen (as Linux's
    /// multigrain timestamps). File lock held.
    func stampWrite(_ f: FileData) {
        var t: Timestamp
        if f.mtimeQueried {
            t = Timestamp.now()
            if let current = f.currentMtime, t <= current { t = current.next }
        } else {
            t = Timestamp.coarseNow()
            if let current = f.currentMtime, t <= current { return }
        }
        f.pendingMtime = t
        f.currentMtime = t
        f.mtimeQueried = false
    }

    /// Size and mtime after a write, then write-through or sync if asked.
    private func finishWrite(_ f: FileData, written: Int, end: UInt64, sync: SyncMode, updateSize: Bool) throws -> Int {
        if updateSize && end > f.size { f.size = end }
        stampWrite(f)
        if sync != .none || !options.writeBack {
            try writeBack(f, flushDevice: sync != .none, dataOnly: sync == .data)
            if !options.writeBack { dropClean(f) }
        } else if cache.dirtyBeyond(options.dirtyRatio, andAtLeast: options.writeBackStartPages, of: f) {
            // Above the dirty ratio: the file's pages start for the device now,
            // while the writer goes on (the timer would come up to 200 ms late).
            startWriteBack(f)
        }
        return written
    }

    // MARK: write-back

    /// Writes every dirty page of `f` to the device and commits what the pool
    /// must learn (new extents, written unwritten ranges, size, mtime) in one
    /// transaction, after a device flush. `dataOnly` (fdatasync, O_DSYNC): a
    /// pending mtime alone is no reason for a transaction. File lock held.
    func writeBack(_ f: FileData, flushDevice: Bool, dataOnly: Bool = false) throws {
        guard let w = try beginWriteBack(f, dataOnly: dataOnly) else {
            if flushDevice { try flushDeviceOrThrow() }
            return
        }
        defer { endWriteBack(w) }
        do {
            // New blocks must be on stable storage before the pool points at them.
            if w.exposesWrites || flushDevice {
                try device.writeDurably(w.requests)
            } else {
                try device.perform(w.requests)
            }
            try commitWriteBack(w)
        } catch {
            throw failWriteBack(w, error)
        }
    }

    /// A write-back between its phases: the dirty pages pinned, the blocks
    /// claimed, the transfers built, what the pool must learn. Each file has
    /// one, reused (its arrays keep their storage, so a write-back of a few
    /// pages allocates nothing): only the holder of the file's lock uses it,
    /// from `beginWriteBack` to `endWriteBack`.
    final class PendingWriteBack {
        unowned let file: FileData
        var dirty: [(block: UInt64, frame: Int32)] = []
        var requests: [BlockIORequest] = []
        /// The segment arrays of earlier writes, emptied, for the next ones.
        private var spareSegments: [[iovec]] = []
        /// The extent map of the dirty run being planned.
        var runMap: [ExtentSegment] = []
        var mappings: [NewMapping] = []
        var claims: [BlockRun] = []
        var writtenRanges: [(start: UInt64, count: UInt64)] = []
        var redundantReservations: [UInt64] = []
        var consumedReservations: [UInt64] = []
        /// Between `beginWriteBack` and `endWriteBack`.
        var inUse = false
        /// For an fdatasync: the mtime may wait for a later transaction.
        var dataOnly = false
        /// The file's size and pending mtime when the write-back began: what
        /// it commits (writes may change the file's while its I/O runs).
        var size: UInt64 = 0
        var mtime: Timestamp?
        var sizeChanged = false
        /// The file blocks whose frames it pinned (none outside), for writers
        /// that run while it is in flight.
        var blocks: ClosedRange<UInt64>?
        /// Whether the transaction makes the pool point at what was just
        /// written (new extents, written unwritten ranges, a new size): then
        /// the writes must be on stable storage before it.
        var exposesWrites: Bool { !mappings.isEmpty || !writtenRanges.isEmpty || sizeChanged }
        /// Whether a transaction must follow the writes: it carries the pending
        /// mtime too, which alone needs one unless this is an fdatasync's.
        var commit: Bool { exposesWrites || (mtime != nil && !dataOnly) }
        init(_ file: FileData) { self.file = file }

        /// Empties everything for the next write-back, keeping the storage.
        func reset() {
            dirty.removeAll(keepingCapacity: true)
            while var request = requests.popLast() {
                request.segments.removeAll(keepingCapacity: true)
                spareSegments.append(request.segments)
            }
            runMap.removeAll(keepingCapacity: true)
            mappings.removeAll(keepingCapacity: true)
            claims.removeAll(keepingCapacity: true)
            writtenRanges.removeAll(keepingCapacity: true)
            redundantReservations.removeAll(keepingCapacity: true)
            consumedReservations.removeAll(keepingCapacity: true)
        }

        /// One vectored device write at byte `offset` of the frames of `dirty[pages]`.
        func addWrite(at offset: UInt64, pages: Range<Int>, cache: PageCache, blockSize: Int) {
            var segments = spareSegments.popLast() ?? []
            for k in pages { segments.append(iovec(iov_base: cache.memory(dirty[k].frame), iov_len: blockSize)) }
            requests.append(BlockIORequest(kind: .write, segments: segments, offset: offset))
        }
    }

    /// First phase (file lock held): pins the inode and the dirty pages,
    /// claims blocks for holes and builds the device writes. Nil when there is
    /// nothing to write or commit (or the file is gone). Every pending
    /// write-back ends with `endWriteBack`, after `commitWriteBack` or
    /// `failWriteBack`.
    func beginWriteBack(_ f: FileData, dataOnly: Bool = false) throws -> PendingWriteBack? {
        settleWriteBack(f, waiting: true)
        if filesLock.withLock({ f.dead }) { return nil }
        if f.dirtyBlocks.isEmpty && !f.needsCommit { return nil }
        // The pin keeps the inode from being freed (its number reused) while its
        // blocks are written and its extents committed; a background write-back
        // can race the last unlink, whose freeing then waits for the unpin.
        guard try metadata.pin(f.ino, generation: f.generation) else {
            forgetDeadFile(f)
            return nil
        }
        let w = f.pendingWriteBack
        precondition(!w.inUse, "a second write-back of inode \(f.ino) while one is pending")
        w.inUse = true
        w.reset()
        w.dataOnly = dataOnly
        w.size = f.size
        w.mtime = f.pendingMtime
        w.sizeChanged = f.size != f.persistedSize
        cache.pinDirty(f, into: &w.dirty)
        w.blocks = w.dirty.isEmpty ? nil : w.dirty[0].block...w.dirty[w.dirty.count - 1].block
        do {
            try planWrites(w)
        } catch {
            let error = failWriteBack(w, error)
            endWriteBack(w)
            throw error
        }
        return w
    }

    /// Maps the dirty runs to device blocks (claiming new ones) and makes one
    /// vectored write per device-contiguous piece (at most 1 MiB).
    private func planWrites(_ w: PendingWriteBack) throws {
        var i = 0
        while i < w.dirty.count {
            // A run of consecutive dirty blocks.
            var j = i + 1
            while j < w.dirty.count && w.dirty[j].block == w.dirty[j - 1].block + 1 { j += 1 }
            try planRun(w, pages: i..<j)
            i = j
        }
    }

    /// The writes of `w.dirty[pages]`, consecutive file blocks: in place where
    /// the blocks are mapped (and not shared), to newly claimed blocks elsewhere.
    private func planRun(_ w: PendingWriteBack, pages: Range<Int>) throws {
        let f = w.file, runStart = w.dirty[pages.lowerBound].block
        try metadata.mapBlocks(f.ino, start: runStart, count: UInt64(pages.count), into: &w.runMap)
        for seg in w.runMap {
            let blocks = seg.fileBlock..<(seg.fileBlock + seg.length)
            // w.dirty[firstPage + k] holds file block seg.fileBlock + k.
            let firstPage = pages.lowerBound + Int(seg.fileBlock - runStart)
            if let dev = seg.deviceBlock, !seg.shared {
                if seg.unwritten { w.writtenRanges.append((seg.fileBlock, seg.length)) }
                for b in blocks where f.reserved.contains(b) { w.redundantReservations.append(b) }
                planPieces(w, firstPage: firstPage, device: dev, length: seg.length)
            } else {
                var held: UInt64 = 0
                for b in blocks where f.reserved.contains(b) { held += 1 }
                let runs = try metadata.claimBlocks(f.ino, fileBlock: seg.fileBlock, count: seg.length, fromReservation: held)
                for b in blocks where f.reserved.contains(b) { w.consumedReservations.append(b) }
                w.claims += runs
                var page = firstPage, fb = seg.fileBlock
                for r in runs {
                    w.mappings.append(NewMapping(fileBlock: fb, deviceBlock: r.start, length: r.length, replacesShared: seg.shared))
                    planPieces(w, firstPage: page, device: r.start, length: r.length)
                    page += Int(r.length)
                    fb += r.length
                }
            }
        }
    }

    /// Writes of `length` pages from `w.dirty[firstPage...]` to device blocks
    /// from `device` on, at most 256 pages (1 MiB) each.
    private func planPieces(_ w: PendingWriteBack, firstPage: Int, device: UInt64, length: UInt64) {
        var done: UInt64 = 0
        while done < length {
            let count = min(256, length - done)
            let first = firstPage + Int(done)
            w.addWrite(at: (device + done) * blockSize, pages: first..<(first + Int(count)), cache: cache, blockSize: Int(blockSize))
            done += count
        }
    }

    /// Last phase, once the writes are on the device (and flushed if new
    /// blocks or a size are committed): the transaction, then the pages are clean.
    func commitWriteBack(_ w: PendingWriteBack) throws {
        try commitToPool(w)
        applyToFile(w)
    }

    /// The transaction and the pages made clean: nothing of the file's
    /// fields, so it may run without the file lock (`startWriteBack`).
    private func commitToPool(_ w: PendingWriteBack) throws {
        if w.commit {
            try metadata.commitWrites(w.file.ino, mappings: w.mappings, written: w.writtenRanges, size: w.size, mtime: w.mtime)
        }
        for d in w.dirty { cache.markClean(d.frame) }
        if !w.dirty.isEmpty { cacheCounters.writtenBackBytes.increment(by: w.dirty.count * Int(blockSize)) }
    }

    /// What a committed write-back changes in the file's fields (file lock held).
    private func applyToFile(_ w: PendingWriteBack) {
        let f = w.file
        if w.commit {
            f.persistedSize = w.size
            // A write made while it was in flight keeps its newer mtime pending.
            if f.pendingMtime == w.mtime { f.pendingMtime = nil }
        }
        for b in w.consumedReservations { f.reserved.remove(b) }
        for b in w.redundantReservations { f.reserved.remove(b) }
        metadata.unreserveBlocks(UInt64(w.redundantReservations.count))
        if !cache.holdsDirtyPages(f) { f.dirtySince = 0 }
    }

    // MARK: write-back in flight

    /// Starts a write-back of `f` whose device I/O and transaction run on the
    /// background writer's queue, without the file lock, so writes to other
    /// blocks, reads and stat go on meanwhile (file lock held; returns at once).
    /// Its frames stay pinned and its results reach the file's fields through
    /// `settleWriteBack`; anything that changes the mapping or writes back
    /// waits for it there. False when none was started.
    @discardableResult
    func startWriteBack(_ f: FileData) -> Bool {
        guard backgroundWriterStarted.load(ordering: .acquiring), settleWriteBack(f, waiting: false) else { return false }
        let w: PendingWriteBack
        do {
            guard let begun = try beginWriteBack(f) else { return false }
            w = begun
        } catch {
            logger.error("write-back of inode \(f.ino): \(error)")
            return false
        }
        f.writeBackEnd.withLock { f.writeBackInFlight = true }
        writeBacksStartedInFlight.add(1, ordering: .relaxed)
        // The file's record goes with it; the writer-back in flight is its only user.
        flusherQueue.async { [self] in finishInFlight(f) }
        return true
    }

    /// The in-flight part of `startWriteBack`, on the background writer's queue.
    private func finishInFlight(_ f: FileData) {
        let w = f.pendingWriteBack
        var committed = false
        do {
            if w.exposesWrites { try device.writeDurably(w.requests) } else { try device.perform(w.requests) }
            try commitToPool(w)
            committed = true
        } catch {
            _ = failWriteBack(w, error)   // the pages stay dirty, for the next write-back
        }
        endWriteBack(w)
        f.writeBackEnd.withLock {
            f.writeBackInFlight = false
            f.writeBackToSettle = committed
            f.writeBackEnd.broadcast()
        }
    }

    /// With the file lock held: applies a finished in-flight write-back to the
    /// file's fields, first waiting for it if `waiting`. False if one is still
    /// in flight (only when not waiting).
    @discardableResult
    func settleWriteBack(_ f: FileData, waiting: Bool) -> Bool {
        let (ended, toSettle) = f.writeBackEnd.withLock { () -> (Bool, Bool) in
            if waiting { while f.writeBackInFlight { f.writeBackEnd.wait() } }
            defer { if !f.writeBackInFlight { f.writeBackToSettle = false } }
            return (!f.writeBackInFlight, f.writeBackToSettle)
        }
        if toSettle { applyToFile(f.pendingWriteBack) }
        return ended
    }

    /// The file lock, once no write-back of `f` is in flight and the last is
    /// settled: for whatever changes the mapping, drops pages or writes back.
    func locked<T>(_ f: FileData, _ body: () throws -> T) rethrows -> T {
        try f.lock.withLock {
            settleWriteBack(f, waiting: true)
            return try body()
        }
    }

    /// With the file lock held: waits for an in-flight write-back whose pages
    /// a write to `blocks` would touch (they must not change under its I/O).
    private func waitForWriteBack(of f: FileData, touching blocks: ClosedRange<UInt64>) {
        guard !settleWriteBack(f, waiting: false), let busy = f.pendingWriteBack.blocks, busy.overlaps(blocks) else { return }
        settleWriteBack(f, waiting: true)
    }

    /// Undoes the claims of a write-back that failed (the pages stay dirty, to
    /// be retried) and says what to throw.
    func failWriteBack(_ w: PendingWriteBack, _ error: Error) -> Error {
        metadata.releaseClaimedBlocks(w.claims)
        // The reservations taken by the claims go back so the pages can be retried.
        if !w.consumedReservations.isEmpty { try? metadata.reserveBlocks(UInt64(w.consumedReservations.count)) }
        w.claims.removeAll(keepingCapacity: true)
        w.consumedReservations.removeAll(keepingCapacity: true)
        logger.error("write-back of inode \(w.file.ino) failed: \(error)")
        return (error as? Errno) ?? Errno.ioError
    }

    /// Unpins the pages and the inode.
    func endWriteBack(_ w: PendingWriteBack) {
        for d in w.dirty { cache.unpin(d.frame) }
        do { try metadata.unpin(w.file.ino) } catch { logger.error("write-back of inode \(w.file.ino): unpin: \(error)") }
        w.inUse = false
    }

    private func flushDeviceOrThrow() throws {
        do { try device.flushShared() } catch { throw Errno.ioError }
    }

    /// Writes back other files whose locks are free; true if any frame came clean.
    private func writeBackOthers(except current: FileData) -> Bool {
        let candidates = filesLock.withLock { files.values.filter { $0 !== current } }
        var progressed = false
        for f in candidates {
            guard f.lock.tryLock() else { continue }
            defer { f.lock.unlock() }
            // Settled, no write-back is in flight: dirtyBlocks changes only under the file lock.
            guard settleWriteBack(f, waiting: false), !f.dirtyBlocks.isEmpty else { continue }
            if (try? writeBack(f, flushDevice: false)) != nil { progressed = true }
        }
        return progressed
    }

    /// On the background writer's queue, so it never waits for a write-back
    /// in flight: that one ends on this queue, after this pass.
    private func backgroundWriteBack() {
        reapDeadFiles(waiting: false)
        defer { pruneIdleFiles() }
        let now = monotonicNanoseconds()
        let age = UInt64(options.writeBackAgeMilliseconds) * 1_000_000
        let pressure = cache.dirtyRatio > options.dirtyRatio
        let candidates = filesLock.withLock { Array(files.values) }
        for f in candidates {
            guard f.lock.tryLock() else { continue }
            defer { f.lock.unlock() }
            guard settleWriteBack(f, waiting: false) else { continue }
            let old = f.dirtySince != 0 && now >= f.dirtySince + age
            if (pressure && !f.dirtyBlocks.isEmpty) || old || (f.dirtyBlocks.isEmpty && f.needsCommit) {
                startWriteBack(f)   // finished on this queue, after this pass
            }
        }
    }

    // MARK: fsync

    /// Makes every acknowledged write of `ino` durable: its dirty blocks, one
    /// device flush, one transaction. Namespace changes are durable already, so
    /// fsync of a directory has nothing to do.
    public func fsync(_ ino: UInt64, dataOnly: Bool = false) throws {
        countFsyncs(1)
        try fsyncAlone(ino, dataOnly: dataOnly)
    }

    /// fsyncs asked for since the file system was opened.
    public var fsyncsTaken: UInt64 { fsyncCount.load(ordering: .relaxed) }

    private func countFsyncs(_ n: Int) {
        fsyncCount.add(UInt64(n), ordering: .relaxed)
        fsyncs.increment(by: n)
    }

    private func fsyncAlone(_ ino: UInt64, dataOnly: Bool) throws {
        guard let f = filesLock.withLock({ files[ino] }) else {
            // Nothing cached: everything of this file is already on the device and in the pool.
            _ = try metadata.getattr(ino)
            return
        }
        try locked(f) {
            // fdatasync may skip a commit that only changes mtime.
            if dataOnly && f.dirtyBlocks.isEmpty && f.size == f.persistedSize {
                try flushDeviceOrThrow()
                return
            }
            try writeBack(f, flushDevice: true, dataOnly: dataOnly)
        }
    }

    /// Several fsyncs that arrived together (one pass over a queue), made
    /// durable together: each file's writes, then **one** device flush for all
    /// of them, then each file's transaction, so N fsyncs cost one flush and
    /// no thread hand-over. `results[i]` is nil when item i is durable, else
    /// its error.
    public func fsync(group items: [(ino: UInt64, dataOnly: Bool)]) -> [Error?] {
        withFsyncGroupTables { t in
            t.items.append(contentsOf: items)
            fsync(group: t)
            return Array(t.results)
        }
    }

    /// `fsync(group:)` over tables reused from group to group (see
    /// `withFsyncGroupTables`): `t.items` in, `t.results` out. Only the
    /// first file's lock is waited for (no lock is held then); the others are
    /// tried, and a file another thread holds is synced alone afterwards, so
    /// this never waits for a lock while holding one.
    public func fsync(group t: FsyncGroupTables) {
        countFsyncs(t.items.count)
        t.results.append(contentsOf: repeatElement(nil, count: t.items.count))
        // A lone fsync (the common case) needs none of the grouping's tables.
        if t.items.count == 1 {
            do { try fsyncAlone(t.items[0].ino, dataOnly: t.items[0].dataOnly) } catch { t.results[0] = error }
            return
        }
        t.planFiles()
        lockFiles(t)
        for (f, file) in t.locked {
            let dataOnly = t.files[file].dataOnly
            // fdatasync may skip a commit that only changes mtime.
            if dataOnly && f.dirtyBlocks.isEmpty && f.size == f.persistedSize { t.flushing.append(file); continue }
            do {
                guard let w = try beginWriteBack(f, dataOnly: dataOnly) else { t.flushing.append(file); continue }
                t.pending.append((w, file))
            } catch {
                t.fail(file, error)
            }
        }
        performWrites(t)
        for p in t.written { t.flushing.append(p.file) }
        // One flush for every file whose writes completed, then the transactions.
        var flushError: Error?
        if !t.flushing.isEmpty {
            do { try flushDeviceOrThrow() } catch { flushError = error; for file in t.flushing { t.fail(file, error) } }
        }
        for (w, file) in t.written {
            do {
                if let flushError { throw flushError }
                try commitWriteBack(w)
            } catch {
                t.fail(file, failWriteBack(w, error))
            }
            endWriteBack(w)
        }
        for (f, _) in t.locked { f.lock.unlock() }
        for file in t.alone {
            do { try fsyncAlone(t.files[file].ino, dataOnly: t.files[file].dataOnly) } catch { t.fail(file, error) }
        }
    }

    /// Locks the group's cached files (the first waited for, the others
    /// tried); the rest are synced alone.
    private func lockFiles(_ t: FsyncGroupTables) {
        filesLock.withLock { for file in t.files { t.states.append(files[file.ino]) } }
        for (file, state) in t.states.enumerated() {
            guard let f = state else { t.alone.append(file); continue }   // nothing cached: a getattr says if it exists
            if t.locked.isEmpty { f.lock.lock() } else if !f.lock.tryLock() { t.alone.append(file); continue }
            guard settleWriteBack(f, waiting: t.locked.isEmpty) else { f.lock.unlock(); t.alone.append(file); continue }
            t.locked.append((f, file))
        }
    }

    /// Performs the write-backs' transfers in one batch, so the device works
    /// on every file of a group at once (one submission, one wait, instead
    /// of one write after another); what completed goes to `t.written`, a
    /// failed one is failed and ended here.
    private func performWrites(_ t: FsyncGroupTables) {
        if t.pending.count > 1 {
            // Let go before the write-backs' records are reused (their arrays must be unshared then).
            defer { t.requests.removeAll(keepingCapacity: true) }
            for p in t.pending { t.requests.append(contentsOf: p.write.requests) }
            if (try? device.perform(t.requests)) != nil {
                t.written.append(contentsOf: t.pending)
                return
            }
        }
        // One by one: a failed batch does not say whose write failed. Writing
        // again is harmless: the files are locked, so each transfer carries
        // the same bytes for the same blocks.
        for p in t.pending {
            do {
                try device.perform(p.write.requests)
                t.written.append(p)
            } catch {
                t.fail(p.file, failWriteBack(p.write, error))
                endWriteBack(p.write)
            }
        }
    }

    /// Runs `body` with a group's tables, reused: a group of several FSYNCs
    /// allocates nothing once they have grown. Each caller has its own while
    /// it runs (groups commit on several threads at once).
    public func withFsyncGroupTables<T>(_ body: (FsyncGroupTables) throws -> T) rethrows -> T {
        let t = fsyncGroupTablesLock.withLock { spareFsyncGroupTables.popLast() } ?? FsyncGroupTables()
        defer {
            t.reset()
            fsyncGroupTablesLock.withLock { if spareFsyncGroupTables.count < 8 { spareFsyncGroupTables.append(t) } }
        }
        return try body(t)
    }

    /// The write-back cache's frames: all of them, those holding a block, and
    /// the dirty ones (for the metrics, read when scraped).
    public var cacheUsage: (frames: Int, used: Int, dirty: Int) { cache.usage }

    /// Writes back every file (syncfs, shutdown).
    public func syncAll() throws {
        let all = filesLock.withLock { Array(files.values) }
        for f in all { try locked(f) { try writeBack(f, flushDevice: false) } }
        try flushDeviceOrThrow()
    }
}

/// The device reads of one `loadBlocks`: requests made so far, the run being
/// built, and every frame pinned for them (let go if the reads fail).
private struct ReadPlan {
    var requests: [BlockIORequest] = []
    var readFrames: [(block: UInt64, frame: Int32)] = []
    var pinned: [Int32] = []
    private var run: (start: UInt64, device: UInt64, iov: [iovec])?

    /// Adds file block `block` (device block `device`) read into `frame`,
    /// extending the run when both are contiguous with it.
    mutating func add(block: UInt64, device: UInt64, frame: Int32, memory: UnsafeMutableRawPointer, blockSize: UInt64) {
        pinned.append(frame)
        readFrames.append((block, frame))
        let v = iovec(iov_base: memory, iov_len: Int(blockSize))
        if let r = run, r.start + UInt64(r.iov.count) == block, r.iov.count < 256 {
            run!.iov.append(v)
        } else {
            endRun(blockSize)
            run = (block, device, [v])
        }
    }

    mutating func endRun(_ blockSize: UInt64) {
        guard let r = run else { return }
        requests.append(BlockIORequest(kind: .read, segments: r.iov, offset: r.device * blockSize))
        run = nil
    }
}

/// The tables of one `FileDataTier.fsync(group:)`: the caller's items (and
/// its own tag per item), the results, and what the group works through:
/// the items in inode order, one entry per file, the locked files, the
/// write-backs. Emptied, not freed, between groups.
public final class FsyncGroupTables {
    /// The fsyncs, filled by the caller.
    public var items: [(ino: UInt64, dataOnly: Bool)] = []
    /// Whatever the caller keeps per item (PMFSOperations: the member's place in its group).
    public var tags: [Int] = []
    /// nil when item i is durable, else its error.
    public internal(set) var results: [Error?] = []
    /// Item indices in inode order, then one entry per file (a run of `order`).
    var order: [Int] = []
    var files: [(ino: UInt64, dataOnly: Bool, first: Int, end: Int)] = []
    var states: [FileData?] = []
    var locked: [(file: FileData, index: Int)] = []
    var alone: [Int] = []
    var flushing: [Int] = []
    var pending: [(write: FileDataTier.PendingWriteBack, file: Int)] = []
    var written: [(write: FileDataTier.PendingWriteBack, file: Int)] = []
    var requests: [BlockIORequest] = []

    public init() {}

    /// One entry per file, in inode order; a full fsync wins over fdatasync.
    func planFiles() {
        order.append(contentsOf: items.indices)
        order.sort { items[$0].ino < items[$1].ino }
        var k = 0
        while k < order.count {
            let ino = items[order[k]].ino
            var end = k, dataOnly = true
            while end < order.count && items[order[end]].ino == ino {
                dataOnly = dataOnly && items[order[end]].dataOnly
                end += 1
            }
            files.append((ino, dataOnly, k, end))
            k = end
        }
    }

    /// Every item of file `index` failed with `error`.
    func fail(_ index: Int, _ error: Error) {
        for k in files[index].first..<files[index].end { results[order[k]] = error }
    }

    /// Empties every table, keeping its storage.
    func reset() {
        items.removeAll(keepingCapacity: true)
        tags.removeAll(keepingCapacity: true)
        results.removeAll(keepingCapacity: true)
        order.removeAll(keepingCapacity: true)
        files.removeAll(keepingCapacity: true)
        states.removeAll(keepingCapacity: true)
        locked.removeAll(keepingCapacity: true)
        alone.removeAll(keepingCapacity: true)
        flushing.removeAll(keepingCapacity: true)
        pending.removeAll(keepingCapacity: true)
        written.removeAll(keepingCapacity: true)
        requests.removeAll(keepingCapacity: true)
    }
}
