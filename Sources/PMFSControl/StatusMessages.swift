// The answers of df, stat and stats: what a served pool holds, one path's
// attributes, and the daemon's running totals.

/// The write-back cache: frames of one data block each.
public struct CacheUsage: Codable, Sendable {
    public var frames: Int
    public var used: Int
    /// Frames holding changes not yet written back.
    public var dirty: Int
    public var frameBytes: UInt32
    public init(frames: Int, used: Int, dirty: Int, frameBytes: UInt32) {
        self.frames = frames; self.used = used; self.dirty = dirty; self.frameBytes = frameBytes
    }
}

/// Data blocks with more than one owner (clones, snapshots).
public struct SharingInfo: Codable, Sendable {
    public var blocks: UInt64
    /// Records of the shared-block table (runs of blocks with one count).
    public var runs: Int
    /// Owners summed over the shared blocks; references minus blocks is what sharing saves.
    public var references: UInt64
    public init(blocks: UInt64, runs: Int, references: UInt64) { self.blocks = blocks; self.runs = runs; self.references = references }
}

/// df: the pool's space and inodes, as pmfs-inspect df shows an offline pool.
public struct SpaceInfo: Codable, Sendable {
    public var blockSize: UInt32
    public var totalBlocks: UInt64
    public var freeBlocks: UInt64
    public var totalInodes: UInt64
    public var freeInodes: UInt64
    /// The metadata pool's size in bytes.
    public var poolBytes: UInt64
    /// nil when the shared-block table could not be read (`sharingError` says why).
    public var sharing: SharingInfo?
    public var sharingError: String?
    public var cache: CacheUsage
    public init(blockSize: UInt32, totalBlocks: UInt64, freeBlocks: UInt64, totalInodes: UInt64, freeInodes: UInt64, poolBytes: UInt64,
                sharing: SharingInfo?, sharingError: String?, cache: CacheUsage) {
        self.blockSize = blockSize; self.totalBlocks = totalBlocks; self.freeBlocks = freeBlocks
        self.totalInodes = totalInodes; self.freeInodes = freeInodes; self.poolBytes = poolBytes
        self.sharing = sharing; self.sharingError = sharingError; self.cache = cache
    }
}

/// A time as the pool keeps it.
public struct TimeValue: Codable, Sendable {
    public var seconds: Int64
    public var nanoseconds: UInt32
    public init(seconds: Int64, nanoseconds: UInt32) { self.seconds = seconds; self.nanoseconds = nanoseconds }
}

/// A regular file's data as the pool maps it (blocks still only in the cache are not mapped yet).
public struct ExtentSummary: Codable, Sendable {
    /// Runs of mapped blocks within the file's size.
    public var mappedRuns: Int
    public var mappedBlocks: UInt64
    /// Mapped blocks shared with clones (copied on write).
    public var sharedBlocks: UInt64
    public init(mappedRuns: Int, mappedBlocks: UInt64, sharedBlocks: UInt64) {
        self.mappedRuns = mappedRuns; self.mappedBlocks = mappedBlocks; self.sharedBlocks = sharedBlocks
    }
}

/// stat: one inode's attributes, with the cache's size and times for a file it holds.
public struct PathStatus: Codable, Sendable {
    public var path: String
    public var ino: UInt64
    public var generation: UInt64
    /// regular file, directory, symbolic link, fifo, socket, character device, block device.
    public var type: String
    /// The whole st_mode (type and permission bits).
    public var mode: UInt32
    public var links: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
    /// 512-byte units allocated (or reserved by the cache).
    public var blocks: UInt64
    public var rdev: UInt64
    public var flags: UInt32
    /// Part of a read-only snapshot: every change fails with EROFS.
    public var readOnly: Bool
    public var atime: TimeValue
    public var mtime: TimeValue
    public var ctime: TimeValue
    public var btime: TimeValue
    /// A symbolic link's target, as `AttributeText.displayName` shows bytes.
    public var linkTarget: String?
    /// Extended attribute names, shown the same way.
    public var xattrs: [String]
    /// A regular file's mapping; nil for other types.
    public var extents: ExtentSummary?
    public init(path: String, ino: UInt64, generation: UInt64, type: String, mode: UInt32, links: UInt32, uid: UInt32, gid: UInt32,
                size: UInt64, blocks: UInt64, rdev: UInt64, flags: UInt32, readOnly: Bool,
                times: (atime: TimeValue, mtime: TimeValue, ctime: TimeValue, btime: TimeValue),
                linkTarget: String?, xattrs: [String], extents: ExtentSummary?) {
        self.path = path; self.ino = ino; self.generation = generation; self.type = type; self.mode = mode; self.links = links
        self.uid = uid; self.gid = gid; self.size = size; self.blocks = blocks; self.rdev = rdev; self.flags = flags
        self.readOnly = readOnly; self.atime = times.atime; self.mtime = times.mtime; self.ctime = times.ctime; self.btime = times.btime
        self.linkTarget = linkTarget; self.xattrs = xattrs; self.extents = extents
    }
}

/// One session's request counts.
public struct SessionCounts: Codable, Sendable {
    public var session: UInt64
    /// "host mount /mnt/pmfs" or the guest socket.
    public var name: String
    /// FUSE requests taken since pmfsd started serving the session.
    public var requests: UInt64
    /// Taken and not answered yet (waiting locks, fsyncs in a group, those being served).
    public var inFlight: Int
    public init(session: UInt64, name: String, requests: UInt64, inFlight: Int) {
        self.session = session; self.name = name; self.requests = requests; self.inFlight = inFlight
    }
}

/// Where the host mount's requests came from.
public struct HostTransportCounts: Codable, Sendable {
    public var viaRing: Int
    public var viaDevice: Int
    /// FSYNC group commits from the rings, and the FSYNCs in them.
    public var fsyncGroups: Int
    public var groupedFsyncs: Int
    public init(viaRing: Int, viaDevice: Int, fsyncGroups: Int, groupedFsyncs: Int) {
        self.viaRing = viaRing; self.viaDevice = viaDevice; self.fsyncGroups = fsyncGroups; self.groupedFsyncs = groupedFsyncs
    }
}

/// One sample of the metrics registry, as the Prometheus text gives it.
public struct MetricSample: Codable, Sendable {
    /// The name with its labels: pmfs_fuse_requests_total{op="LOOKUP",session="host"}.
    public var series: String
    public var value: String
    public init(series: String, value: String) { self.series = series; self.value = value }
}

/// stats: the daemon's running totals since it started.
public struct DaemonStatistics: Codable, Sendable {
    public var sessions: [SessionCounts]
    /// The host mount's transports; nil without a host mount.
    public var hostTransport: HostTransportCounts?
    public var transactionsCommitted: UInt64
    public var transactionsAborted: UInt64
    public var fsyncs: UInt64
    public var deviceFlushes: UInt64
    public var cache: CacheUsage
    /// Every counter, gauge and histogram sum and count of the registry, by
    /// series (not the buckets: /metrics has them); nil without --metrics.
    public var metrics: [MetricSample]?
    public init(sessions: [SessionCounts], hostTransport: HostTransportCounts?, transactionsCommitted: UInt64, transactionsAborted: UInt64,
                fsyncs: UInt64, deviceFlushes: UInt64, cache: CacheUsage, metrics: [MetricSample]?) {
        self.sessions = sessions; self.hostTransport = hostTransport
        self.transactionsCommitted = transactionsCommitted; self.transactionsAborted = transactionsAborted
        self.fsyncs = fsyncs; self.deviceFlushes = deviceFlushes; self.cache = cache; self.metrics = metrics
    }
}
