// Data-tier benchmark: pmfs (pool on /dev/shm with PMEM_IS_PMEM_FORCE=1, data
// file on disk through O_DIRECT + io_uring) side by side with plain
// pwrite/pread + fdatasync on an ext4 file on the same disk, in one run; then
// pmfs alone: the first write to a block shared with a clone against the first
// write to an unshared block. Run through tools/bench/data.sh (release build).
// Prints two Markdown tables.
import Dispatch
import Glibc
import Logging
import PMFSConcurrency
import PMFSCore
import PMFSData
import PMFSMetadata

setenv("PMEM_IS_PMEM_FORCE", "1", 1)
setenv("PMEMOBJ_CONF", "sds.at_create=0", 1)
LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }

let args = CommandLine.arguments
let directory = args.count > 1 ? args[1] : "/var/tmp"
let fileMiB = args.count > 2 ? Int(args[2]) ?? 1024 : 1024
let fileSize = UInt64(fileMiB) << 20
let tag = "\(getpid())"
let poolPath = "/dev/shm/pmfs-bench-\(tag).pool"
let dataPath = "\(directory)/pmfs-bench-\(tag).data"
let ext4Path = "\(directory)/pmfs-bench-\(tag).ext4"
defer { unlink(poolPath); unlink(dataPath); unlink(ext4Path) }

func now() -> UInt64 { monotonicNanoseconds() }

func percentile(_ sorted: [UInt64], _ p: Double) -> Double {
    Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000
}

struct Rng: RandomNumberGenerator {
    var s: UInt64 = 0x1234_5678
    mutating func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
}

// The pmfs side: a data file twice the working file, preallocated.
let dataBlocks = fileSize * 2 / 4096 + 1024
do {
    // Written with zeros, not just fallocated: on ext4 an fallocated range is
    // "unwritten", and every first write to it would cost a journal commit at
    // fdatasync, which a block device (pmfs's real home) never has.
    let fd = open(dataPath, O_CREAT | O_RDWR | O_TRUNC, 0o600)
    let zeros = [UInt8](repeating: 0, count: 1 << 20)
    var written: UInt64 = 0
    while written < dataBlocks * 4096 {
        let n = min(UInt64(zeros.count), dataBlocks * 4096 - written)
        _ = zeros.withUnsafeBytes { pwrite(fd, $0.baseAddress, Int(n), off_t(written)) }
        written += n
    }
    fsync(fd)
    close(fd)
}
var fo = MetadataStore.FormatOptions(poolSize: 256 << 20, dataBlocks: dataBlocks)
fo.label = "bench"
var metadata = try MetadataStore.format(poolPath: poolPath, options: fo)
try DataDeviceHeader(blockSize: 4096, blockCount: dataBlocks, fsUUID: metadata.uuid, dataUUID: metadata.dataUUID).write(to: dataPath)
var device = try DataDevice(path: dataPath)
var fsOptions = FileDataTier.Options()
fsOptions.cacheBytes = 256 << 20
var fs = try FileDataTier(metadata: metadata, device: device, options: fsOptions)
let ino = try metadata.create(1, try FileName("bench"), NewInode(mode: UInt32(S_IFREG) | 0o644)).ino

// The ext4 side: an empty file, written by the benchmark like pmfs's file.
let ext4 = open(ext4Path, O_CREAT | O_RDWR | O_TRUNC, 0o600)
precondition(ext4 >= 0)
fsync(ext4)
let ext4Direct = open(ext4Path, O_RDWR | 0o40000 /* O_DIRECT */)

let block = AlignedBuffer(count: 1 << 20)
for i in 0..<(1 << 20) { block.pointer.storeBytes(of: UInt8(truncatingIfNeeded: i &* 31), toByteOffset: i, as: UInt8.self) }
let oneMiB = UnsafeRawBufferPointer(start: block.pointer, count: 1 << 20)
let fourK = UnsafeRawBufferPointer(start: block.pointer, count: 4096)

var rows: [(String, String, String, String)] = []
@MainActor func row(_ name: String, _ pmfs: String, _ base: String, _ ratio: String) { rows.append((name, pmfs, base, ratio)); print("\(name): pmfs \(pmfs), ext4 \(base), \(ratio)") }

// 1. Sequential write, 1 MiB writes, then fsync.
var t0 = now()
var off: UInt64 = 0
while off < fileSize { _ = try fs.write(ino, offset: off, from: oneMiB); off += 1 << 20 }
try fs.fsync(ino)
let pmfsSeqW = Double(fileSize) / Double(now() - t0) * 1e9 / 1e6
t0 = now()
off = 0
while off < fileSize { _ = pwrite(ext4, oneMiB.baseAddress, 1 << 20, off_t(off)); off += 1 << 20 }
fdatasync(ext4)
let ext4SeqW = Double(fileSize) / Double(now() - t0) * 1e9 / 1e6
row("1 MiB sequential write + fsync (MB/s)", String(format0: pmfsSeqW), String(format0: ext4SeqW), String(format2: pmfsSeqW / ext4SeqW))

// 2. Sequential read, 1 MiB reads, caches dropped (pmfs: a fresh FileDataTier; ext4: fadvise DONTNEED).
try fs.shutdown()
fs = try FileDataTier(metadata: metadata, device: device, options: fsOptions)
let readBuffer = AlignedBuffer(count: 1 << 20)
let readInto = UnsafeMutableRawBufferPointer(start: readBuffer.pointer, count: 1 << 20)
t0 = now()
off = 0
while off < fileSize { _ = try fs.read(ino, offset: off, into: readInto); off += 1 << 20 }
let pmfsSeqR = Double(fileSize) / Double(now() - t0) * 1e9 / 1e6
posix_fadvise(ext4, 0, 0, POSIX_FADV_DONTNEED)
t0 = now()
off = 0
while off < fileSize { _ = pread(ext4, readInto.baseAddress, 1 << 20, off_t(off)); off += 1 << 20 }
let ext4SeqR = Double(fileSize) / Double(now() - t0) * 1e9 / 1e6
row("1 MiB sequential read, cold (MB/s)", String(format0: pmfsSeqR), String(format0: ext4SeqR), String(format2: pmfsSeqR / ext4SeqR))

// 3. 4 KiB write + fsync latency: random overwrites in the file (a database's pattern).
var rng = Rng()
let syncs = 2000
var pmfsLat: [UInt64] = [], ext4Lat: [UInt64] = []
for _ in 0..<syncs {
    let o = UInt64.random(in: 0..<(fileSize / 4096), using: &rng) * 4096
    let a = now()
    _ = try fs.write(ino, offset: o, from: fourK)
    try fs.fsync(ino, dataOnly: true)
    pmfsLat.append(now() - a)
    let b = now()
    _ = pwrite(ext4, fourK.baseAddress, 4096, off_t(o))
    fdatasync(ext4)
    ext4Lat.append(now() - b)
}
pmfsLat.sort(); ext4Lat.sort()
row("4 KiB overwrite + fdatasync p50 (µs)", String(format1: percentile(pmfsLat, 0.5)), String(format1: percentile(ext4Lat, 0.5)), String(format2: percentile(pmfsLat, 0.5) / percentile(ext4Lat, 0.5)))
row("4 KiB overwrite + fdatasync p99 (µs)", String(format1: percentile(pmfsLat, 0.99)), String(format1: percentile(ext4Lat, 0.99)), String(format2: percentile(pmfsLat, 0.99) / percentile(ext4Lat, 0.99)))

// 4. 4 KiB append + fsync latency (a log's pattern: new blocks each time).
let appendIno = try metadata.create(1, try FileName("log"), NewInode(mode: UInt32(S_IFREG) | 0o644)).ino
let ext4Log = open(ext4Path + ".log", O_CREAT | O_RDWR | O_TRUNC, 0o600)
defer { unlink(ext4Path + ".log") }
pmfsLat = []; ext4Lat = []
for i in 0..<syncs {
    let a = now()
    _ = try fs.write(appendIno, offset: UInt64(i) * 4096, from: fourK)
    try fs.fsync(appendIno)
    pmfsLat.append(now() - a)
    let b = now()
    _ = pwrite(ext4Log, fourK.baseAddress, 4096, off_t(i * 4096))
    fsync(ext4Log)
    ext4Lat.append(now() - b)
}
pmfsLat.sort(); ext4Lat.sort()
row("4 KiB append + fsync p50 (µs)", String(format1: percentile(pmfsLat, 0.5)), String(format1: percentile(ext4Lat, 0.5)), String(format2: percentile(pmfsLat, 0.5) / percentile(ext4Lat, 0.5)))
row("4 KiB append + fsync p99 (µs)", String(format1: percentile(pmfsLat, 0.99)), String(format1: percentile(ext4Lat, 0.99)), String(format2: percentile(pmfsLat, 0.99) / percentile(ext4Lat, 0.99)))

// 5. 4 KiB random writes (no fsync until the end), IOPS.
let randomOps = 20_000
t0 = now()
for _ in 0..<randomOps { _ = try fs.write(ino, offset: UInt64.random(in: 0..<(fileSize / 4096), using: &rng) * 4096, from: fourK) }
try fs.fsync(ino)
let pmfsRW = Double(randomOps) / Double(now() - t0) * 1e9
t0 = now()
for _ in 0..<randomOps { _ = pwrite(ext4, fourK.baseAddress, 4096, off_t(UInt64.random(in: 0..<(fileSize / 4096), using: &rng) * 4096)) }
fdatasync(ext4)
let ext4RW = Double(randomOps) / Double(now() - t0) * 1e9
row("4 KiB random write, fsync at end (IOPS)", String(format0: pmfsRW), String(format0: ext4RW), String(format2: pmfsRW / ext4RW))

// 6. 4 KiB random reads, cold: pmfs with a fresh cache, ext4 through O_DIRECT (both from the disk).
try fs.shutdown()
fs = try FileDataTier(metadata: metadata, device: device, options: fsOptions)
let readOps = 20_000
t0 = now()
for _ in 0..<readOps {
    _ = try fs.read(ino, offset: UInt64.random(in: 0..<(fileSize / 4096), using: &rng) * 4096, into: UnsafeMutableRawBufferPointer(start: readBuffer.pointer, count: 4096))
}
let pmfsRR = Double(readOps) / Double(now() - t0) * 1e9
t0 = now()
for _ in 0..<readOps { _ = pread(ext4Direct, readBuffer.pointer, 4096, off_t(UInt64.random(in: 0..<(fileSize / 4096), using: &rng) * 4096)) }
let ext4RR = Double(readOps) / Double(now() - t0) * 1e9
row("4 KiB random read, cold, QD1 (IOPS)", String(format0: pmfsRR), String(format0: ext4RR), String(format2: pmfsRR / ext4RR))

// 7. The first write to a block shared with a clone (copied on write: a new
// block, and at fdatasync a commit that maps it and drops an owner of the old
// one) against the first write to an unshared block (in place).
let cow = try firstWriteToSharedBlocks(samples: 1000)

try fs.shutdown()
print("")
print("| measure | pmfs | ext4 | pmfs/ext4 |")
print("|---|---:|---:|---:|")
for r in rows { print("| \(r.0) | \(r.1) | \(r.2) | \(r.3) |") }
print("")
print("| first 4 KiB write to a block | shared (CoW) | unshared | shared/unshared |")
print("|---|---:|---:|---:|")
for r in cow { print("| \(r.0) | \(r.1) | \(r.2) | \(r.3) |") }
print("\npmfs: pool /dev/shm, PMEM_IS_PMEM_FORCE=1; data file \(dataPath) (O_DIRECT: \(device.direct), engine \(device.engine.name)); ext4 baseline: \(ext4Path); file \(fileMiB) MiB.")
device.close()
try metadata.close()

/// `samples` blocks of a file cloned from another (all shared) and as many of
/// a file never cloned, all clean on the device and out of the cache; sample
/// i writes block i of each, once (its first write), alternating which goes
/// first. Each block's state is checked just before it is written, outside
/// the timed part: a shared sample that met an unshared block would stop the
/// run rather than measure the wrong case. Rows: p50 of the write call
/// alone and of write + fdatasync (µs).
@MainActor func firstWriteToSharedBlocks(samples: Int) throws -> [(String, String, String, String)] {
    let length = UInt64(samples) * 4096
    func newFile(_ name: String) throws -> UInt64 {
        try metadata.create(1, try FileName(name), NewInode(mode: UInt32(S_IFREG) | 0o644)).ino
    }
    func fill(_ ino: UInt64) throws {
        var at: UInt64 = 0
        while at < length {
            let n = Int(min(UInt64(oneMiB.count), length - at))
            _ = try fs.write(ino, offset: at, from: UnsafeRawBufferPointer(rebasing: oneMiB[0..<n]))
            at += UInt64(n)
        }
        try fs.fsync(ino)
    }
    let source = try newFile("cow-source"), plain = try newFile("cow-plain"), clone = try newFile("cow-clone")
    try fill(source)
    try fill(plain)
    let cloned = try fs.copyFileRange(from: source, offset: 0, to: clone, offset: 0, length: length)
    precondition(cloned == length, "cloned \(cloned) of \(length) bytes")
    // Nothing cached: both kinds of write start from a block only on the device.
    try fs.shutdown()
    fs = try FileDataTier(metadata: metadata, device: device, options: fsOptions)

    func expectBlock(_ ino: UInt64, _ block: UInt64, shared: Bool) throws {
        let map = try metadata.mapBlocks(ino, start: block, count: 1)
        precondition(map.count == 1 && map[0].deviceBlock != nil && !map[0].unwritten && map[0].shared == shared,
                     "block \(block) of inode \(ino) should be \(shared ? "shared" : "unshared"): \(map)")
    }
    var writeTimes: [[UInt64]] = [[], []], syncTimes: [[UInt64]] = [[], []]
    for i in 0..<samples {
        let block = UInt64(i)
        try expectBlock(clone, block, shared: true)
        try expectBlock(plain, block, shared: false)
        for k in (i % 2 == 0 ? [0, 1] : [1, 0]) {
            let ino = k == 0 ? clone : plain
            let a = now()
            _ = try fs.write(ino, offset: block * 4096, from: fourK)
            let b = now()
            try fs.fsync(ino, dataOnly: true)
            let c = now()
            writeTimes[k].append(b - a)
            syncTimes[k].append(c - a)
        }
    }
    // Every sample copied its block: the clone and its source share nothing now.
    for block in 0..<UInt64(samples) {
        try expectBlock(clone, block, shared: false)
        try expectBlock(source, block, shared: false)
    }
    func p50(_ times: [UInt64]) -> Double { percentile(times.sorted(), 0.5) }
    func row(_ name: String, _ times: [[UInt64]]) -> (String, String, String, String) {
        let shared = p50(times[0]), unshared = p50(times[1])
        print("\(name): shared \(shared) µs, unshared \(unshared) µs")
        return (name, String(format1: shared), String(format1: unshared), String(format2: shared / unshared))
    }
    return [row("write call, p50 (µs)", writeTimes),
            row("write + fdatasync, p50 (µs)", syncTimes),
            ("samples", "\(samples)", "\(samples)", "")]
}

extension String {
    init(format0 v: Double) { self = String(Int(v.rounded())) }
    init(format1 v: Double) { self = String(Double(Int((v * 10).rounded())) / 10) }
    init(format2 v: Double) { self = String(Double(Int((v * 100).rounded())) / 100) }
}
