import Glibc
import PMFSCore
import PMFSData
import PMFSMetadata

/// A freshly formatted pool and data file on /dev/shm, served by a
/// FileDataTier: where tests of whole sessions and mounts start. Deinit shuts
/// the file system down and removes both files.
public final class ShmFileSystem {
    public let pool: String, data: String
    /// PID-RANDOM: names other files of the same test apart (a mount point).
    public let tag: String
    public let metadata: MetadataStore
    public let device: DataDevice
    public let fs: FileDataTier

    /// Files named /dev/shm/pmfs-`name`-PID-RANDOM.{pool,data}.
    public init(name: String, dataBlocks: UInt64, poolSize: UInt64 = 64 << 20) throws {
        setenv("PMEM_IS_PMEM_FORCE", "1", 1)
        tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        pool = "/dev/shm/pmfs-\(name)-\(tag).pool"
        data = "/dev/shm/pmfs-\(name)-\(tag).data"
        let fd = open(data, O_CREAT | O_RDWR | O_TRUNC, 0o600)
        precondition(fd >= 0)
        ftruncate(fd, off_t(dataBlocks * 4096))
        close(fd)
        metadata = try MetadataStore.format(poolPath: pool, options: MetadataStore.FormatOptions(poolSize: poolSize, dataBlocks: dataBlocks))
        try DataDeviceHeader(blockSize: 4096, blockCount: dataBlocks, fsUUID: metadata.uuid, dataUUID: metadata.dataUUID).write(to: data)
        device = try DataDevice(path: data, engine: .auto)
        fs = try FileDataTier(metadata: metadata, device: device, options: FileDataTier.Options())
    }

    deinit {
        try? fs.shutdown()
        device.close()
        try? metadata.close()
        unlink(pool)
        unlink(data)
    }
}
