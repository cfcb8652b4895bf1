import CoreMetrics
import Dispatch

/// The write-back cache as metrics: hits and misses, bytes written back, and
/// the reads and writes held up because every frame was dirty or in use.
struct CacheCounters: Sendable {
    /// Blocks a read found in the cache, and did not (holes too).
    let hits, misses: CoreMetrics.Counter
    let writtenBackBytes: CoreMetrics.Counter
    /// Requests that found no frame free and had to write back or wait, by op.
    let throttledReads, throttledWrites: CoreMetrics.Counter
    /// How long such a request waited for its frame.
    let readThrottle, writeThrottle: CoreMetrics.Timer

    init(_ factory: MetricsFactory) {
        hits = CoreMetrics.Counter(label: "pmfs_cache_hits_total", factory: factory)
        misses = CoreMetrics.Counter(label: "pmfs_cache_misses_total", factory: factory)
        writtenBackBytes = CoreMetrics.Counter(label: "pmfs_cache_written_back_bytes_total", factory: factory)
        throttledReads = CoreMetrics.Counter(label: "pmfs_cache_throttled_total", dimensions: [("op", "read")], factory: factory)
        throttledWrites = CoreMetrics.Counter(label: "pmfs_cache_throttled_total", dimensions: [("op", "write")], factory: factory)
        readThrottle = CoreMetrics.Timer(label: "pmfs_cache_throttle_duration_seconds", dimensions: [("op", "read")], factory: factory)
        writeThrottle = CoreMetrics.Timer(label: "pmfs_cache_throttle_duration_seconds", dimensions: [("op", "write")], factory: factory)
    }

    /// A read or write that waited since `start` (uptime ns) for a frame.
    func throttled(write: Bool, since start: UInt64) {
        let waited = Int64(truncatingIfNeeded: DispatchTime.now().uptimeNanoseconds &- start)
        if write {
            throttledWrites.increment()
            writeThrottle.recordNanoseconds(waited)
        } else {
            throttledReads.increment()
            readThrottle.recordNanoseconds(waited)
        }
    }
}
