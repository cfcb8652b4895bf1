import Glibc
import PMFSCheck
import PMFSData
import Testing
@testable import PMFSCore
@testable import PMFSMetadata

/// A formatted pool plus data file on /dev/shm, served by a FileDataTier.
final class CoreFixture {
    let poolPath: String
    let dataPath: String
    var metadata: MetadataStore!
    var device: DataDevice!
    var fs: FileDataTier!
    let options: FileDataTier.Options
    let engine: IOEngineChoice

    /// Makes the device's engine instead of `engine` (a faulty one), if given.
    let engineMaker: ((Int32) throws -> BlockIOEngine)?

    init(dataBlocks: UInt64 = 16384, options: FileDataTier.Options = FileDataTier.Options(), engine: IOEngineChoice = .auto,
         engineMaker: ((Int32) throws -> BlockIOEngine)? = nil) throws {
        self.engineMaker = engineMaker
        setenv("PMEM_IS_PMEM_FORCE", "1", 1)
        setenv("PMEMOBJ_CONF", "sds.at_create=0", 1)
        let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        poolPath = "/dev/shm/pmfs-core-\(tag).pool"
        dataPath = "/dev/shm/pmfs-core-\(tag).data"
        self.options = options
        self.engine = engine
        let fd = open(dataPath, O_CREAT | O_RDWR | O_TRUNC, 0o600)
        precondition(fd >= 0)
        ftruncate(fd, off_t(dataBlocks * 4096))
        close(fd)
        var fo = MetadataStore.FormatOptions(poolSize: 64 << 20, dataBlocks: dataBlocks)
        fo.label = "core-test"
        metadata = try MetadataStore.format(poolPath: poolPath, options: fo)
        try DataDeviceHeader(blockSize: 4096, blockCount: dataBlocks, fsUUID: metadata.uuid, dataUUID: metadata.dataUUID).write(to: dataPath)
        device = try makeDevice()
        fs = try FileDataTier(metadata: metadata, device: device, options: options)
    }

    private func makeDevice() throws -> DataDevice {
        guard let engineMaker else { return try DataDevice(path: dataPath, engine: engine) }
        return try DataDevice(path: dataPath, makeEngine: engineMaker)
    }

    /// A clean stop and start: everything written back, pool closed and reopened.
    func restart() throws {
        try fs.shutdown()
        device.close()
        try metadata.close()
        try reopen()
    }

    /// A crash: nothing written back, the pool never marked clean.
    func crashAndReopen() throws {
        fs.abandonForTesting()
        device.close()
        metadata.pool.close()
        try reopen()
    }

    /// Opens again after the caller shut everything down and closed the pool.
    func restartFromClosed() throws { try reopen() }

    private func reopen() throws {
        metadata = try MetadataStore.open(poolPath: poolPath, dataDevice: try DataDeviceHeader.read(from: dataPath))
        device = try makeDevice()
        fs = try FileDataTier(metadata: metadata, device: device, options: options)
    }

    deinit {
        if let fs { try? fs.shutdown() }
        device?.close()
        try? metadata?.close()
        unlink(poolPath)
        unlink(dataPath)
    }

    func newFile(_ n: String) throws -> UInt64 {
        try metadata.create(1, try FileName(n), NewInode(mode: UInt32(S_IFREG) | 0o644)).ino
    }

    func write(_ ino: UInt64, _ offset: UInt64, _ bytes: [UInt8], sync: FileDataTier.SyncMode = .none) throws -> Int {
        try bytes.withUnsafeBytes { try fs.write(ino, offset: offset, from: $0, sync: sync) }
    }

    func read(_ ino: UInt64, _ offset: UInt64, _ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0xEE, count: count)
        let n = try out.withUnsafeMutableBytes { try fs.read(ino, offset: offset, into: $0) }
        return Array(out.prefix(n))
    }
}


/// Restarts `t` cleanly and runs the checker on the closed pool: it must find nothing.
func expectClean(_ t: CoreFixture, _ sourceLocation: SourceLocation = #_sourceLocation) throws {
    try t.fs.shutdown()
    t.device.close()
    try t.metadata.close()
    let report = try FileSystemChecker(poolPath: t.poolPath).run(CheckOptions())
    #expect(report.problems.isEmpty, "\(report.problems.map { "\($0.code): \($0.message)" })", sourceLocation: sourceLocation)
    try t.restartFromClosed()
}
