/// Every metric pmfsd exports, with its help text: the registry writes these
/// as `# HELP` lines, and the tests check the names against Prometheus'
/// conventions (a `pmfs_` prefix, units in the name, `_total` on counters).
public enum PMFSMetricHelp {
    public static let counters: [String: String] = [
        "pmfs_fuse_requests_total": "FUSE requests taken, by session and opcode.",
        "pmfs_fuse_request_errors_total": "FUSE requests answered with an error, by session and opcode.",
        "pmfs_fuse_errors_by_errno_total": "FUSE requests answered with an error, by session and errno (C name; others as other).",
        "pmfs_fuse_read_bytes_total": "Bytes returned by FUSE READ, by session.",
        "pmfs_fuse_written_bytes_total": "Bytes accepted by FUSE WRITE, by session.",
        "pmfs_fsyncs_total": "File fsyncs (and fdatasyncs) carried out by the file-system core, all sessions.",
        "pmfs_device_requests_total": "Reads and writes submitted to the data device, by op.",
        "pmfs_device_bytes_total": "Bytes read from and written to the data device, by op.",
        "pmfs_device_flushes_total": "Flushes of the data device (shared by concurrent fsyncs).",
        "pmfs_cache_hits_total": "Blocks a read found in the write-back cache.",
        "pmfs_cache_misses_total": "Blocks a read did not find in the write-back cache (read from the device, or holes).",
        "pmfs_cache_written_back_bytes_total": "Bytes the write-back cache wrote to the data device (by fsync, the age timer, memory pressure or a full cache).",
        "pmfs_cache_throttled_total": "Reads and writes that found every cache frame dirty or in use and had to write back or wait for room, by op.",
        "pmfs_pool_transactions_total": "pmemobj transactions of the metadata pool, by outcome (committed, aborted).",
    ]

    public static let gauges: [String: String] = [
        "pmfs_cache_frames": "Frames (4 KiB) in the write-back cache.",
        "pmfs_cache_frames_used": "Write-back cache frames holding a block.",
        "pmfs_cache_frames_dirty": "Write-back cache frames not yet written back.",
        "pmfs_inodes": "Inodes the pool can hold.",
        "pmfs_inodes_free": "Inodes free in the pool.",
        "pmfs_pool_bytes": "Size of the metadata pool.",
        "pmfs_pool_object_bytes": "Bytes of the metadata pool held by live objects (inodes, directories, extent maps, xattrs), as libpmemobj counts them; allocation headers and fragments are not in it.",
        "pmfs_data_blocks": "Blocks of the data device for file data.",
        "pmfs_data_blocks_free": "Blocks of the data device free.",
        "pmfs_data_block_size_bytes": "Size of one data block.",
        "pmfs_vhost_connected": "1 while a vhost-user front end (QEMU) is connected to the session's socket.",
        "pmfs_vhost_queues_running": "Request and hiprio queues with a running worker, by session.",
        "pmfs_open_handles": "Open file and directory handles, by session.",
        "pmfs_vhost_queue_depth": "Requests the guest has queued that pmfsd has not taken yet, all request queues together, as each queue's worker last saw its ring, by session.",
        "pmfs_fuse_requests_in_flight": "FUSE requests taken and not answered yet (waiting locks, fsyncs in a group, those being served), by session.",
    ]

    public static let histograms: [String: String] = [
        "pmfs_fuse_request_duration_seconds": "Time to handle a FUSE request in pmfsd, by session and class (read, write, fsync, metadata).",
        "pmfs_device_batch_duration_seconds": "Time a batch of data-device transfers took, submitted to last completion, by op (read, write).",
        "pmfs_cache_throttle_duration_seconds": "Time a read or write waited for a cache frame when every frame was dirty or in use, by op.",
        "pmfs_device_flush_duration_seconds": "Time one flush of the data device took (one per group of concurrent fsyncs).",
    ]

    public static let text: [String: String] = counters.merging(gauges) { a, _ in a }.merging(histograms) { a, _ in a }
}
