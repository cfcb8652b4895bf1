import Benchmark
import Dispatch
import Glibc
import PMFSMetadata

// Benchmarks of the metadata engine alone (no FUSE, no data tier): create,
// lookup (hit), rename within a directory, unlink; with 1 thread, and with 2
// threads in separate directories or in one shared directory.
//
// Two media, which need different processes because libpmem reads
// PMEM_IS_PMEM_FORCE once at load:
//   shm  - pool on /dev/shm with PMEM_IS_PMEM_FORCE=1 (emulated PM, real cache flushes);
//          run only when the variable is 1.
//   disk - pool on /var/tmp without it (msync per flush, ~0.5 ms per transaction);
//          run only when it is not set. Fewer operations per iteration.
// tools/bench/metadata.sh runs both and prints the tables. Throughput is in
// operations per second (all threads together); wall clock (scaled, "*") is
// per operation, which reads better for disk rates of a few hundred a second.

let pmemForced = getenv("PMEM_IS_PMEM_FORCE").map { String(cString: $0) == "1" } ?? false

enum Medium: String {
    case shm, disk
    var directory: String { self == .shm ? "/dev/shm" : "/var/tmp" }
    /// A disk pool under forced PM would skip msync: neither figure would mean anything.
    var runnable: Bool { pmemForced == (self == .shm) }
}

enum Layout: String {
    case separate = "own dirs"
    case shared = "shared dir"
}

/// A file name from a worker number and a counter, without String formatting.
@inline(__always)
func entryName(_ worker: Int, _ n: Int) -> FileName {
    var bytes: [UInt8] = [0x77, UInt8(0x30 + worker), 0x2D]   // "w<k>-"
    bytes.reserveCapacity(16)
    var digits: [UInt8] = []
    var v = n
    repeat { digits.append(UInt8(0x30 + v % 10)); v /= 10 } while v > 0
    bytes += digits.reversed()
    return try! FileName(bytes: bytes)
}

/// One benchmark's pool: created in setup, removed in teardown.
final class Fixture: @unchecked Sendable {
    let medium: Medium
    let threads: Int
    let layout: Layout
    var store: MetadataStore!
    var path = ""
    /// The directory each worker works in.
    var dirs: [UInt64] = []
    /// Names each worker created in setup (lookup targets).
    var populated: [[FileName]] = []
    /// Per worker: the next fresh name number.
    var counters: [Int] = []
    /// Per worker: names to unlink in the measured part of an iteration.
    var victims: [[FileName]] = []
    /// Random lookup targets (the 1M-entry case).
    var sample: [FileName] = []

    init(medium: Medium, threads: Int, layout: Layout) {
        self.medium = medium
        self.threads = threads
        self.layout = layout
    }

    func open(poolSize: UInt64, populate: Int) throws {
        path = "\(medium.directory)/pmfs-bench-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).pool"
        store = try MetadataStore.format(poolPath: path, options: .init(poolSize: poolSize, dataBlocks: 1 << 16))
        let shared = try store.mkdir(1, try FileName("shared"), NewInode(mode: 0o755)).ino
        dirs = try (0..<threads).map { t in
            layout == .shared ? shared : try store.mkdir(1, try FileName("dir\(t)"), NewInode(mode: 0o755)).ino
        }
        counters = Array(repeating: 0, count: threads)
        populated = Array(repeating: [], count: threads)
        victims = Array(repeating: [], count: threads)
        for t in 0..<threads {
            for _ in 0..<populate { populated[t].append(try create(t)) }
        }
    }

    /// Creates the worker's next fresh name in its directory.
    @inline(__always)
    @discardableResult
    func create(_ worker: Int) throws -> FileName {
        let name = entryName(worker, counters[worker])
        counters[worker] += 1
        _ = try store.create(dirs[worker], name, NewInode(mode: UInt32(S_IFREG) | 0o644))
        return name
    }

    func close() {
        try? store?.close()
        store = nil
        unlink(path)
    }

    /// Runs `body(worker, count)` on every worker at once, splitting `total` operations.
    func parallel(_ total: Int, _ body: @Sendable (Int, Int) throws -> Void) {
        if threads == 1 {
            try! body(0, total)
            return
        }
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            try! body(t, total / threads)
        }
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration.metrics = [.throughput, .wallClock]
    Benchmark.defaultConfiguration.timeUnits = .microseconds

    for medium in [Medium.shm, .disk] {
        // 1000 operations per measured iteration (all threads together); on disk
        // an iteration takes about a second, so only a few are run.
        let ops = 1000
        let configuration = Benchmark.Configuration(
            metrics: [.throughput, .wallClock],
            warmupIterations: medium == .shm ? 1 : 0,
            scalingFactor: .kilo,
            maxDuration: .seconds(medium == .shm ? 2 : 4),
            maxIterations: medium == .shm ? 400 : 4,
            skip: !medium.runnable)
        let poolSize: UInt64 = medium == .shm ? 1 << 30 : 256 << 20

        for (threads, layout) in [(1, Layout.separate), (2, .separate), (2, .shared)] {
            let label = threads == 1 ? "\(medium) 1 thread" : "\(medium) \(threads) threads, \(layout.rawValue)"

            let creating = Fixture(medium: medium, threads: threads, layout: layout)
            Benchmark("create (\(label))", configuration: configuration) { benchmark in
                creating.parallel(ops) { t, n in
                    for _ in 0..<n { try creating.create(t) }
                }
            } setup: {
                try creating.open(poolSize: poolSize, populate: 0)
            } teardown: {
                creating.close()
            }

            let looking = Fixture(medium: medium, threads: threads, layout: layout)
            Benchmark("lookup hit (\(label))", configuration: configuration) { benchmark in
                looking.parallel(ops) { t, n in
                    let names = looking.populated[t]
                    let dir = looking.dirs[t]
                    var i = looking.counters[t] &* 7919
                    for _ in 0..<n {
                        i = (i &+ 7919) % names.count   // a prime stride: no two lookups in a row hit neighbours
                        blackHole(try looking.store.lookup(dir, names[i]))
                    }
                    looking.counters[t] = i
                }
            } setup: {
                try looking.open(poolSize: poolSize, populate: 10_000 / threads)
            } teardown: {
                looking.close()
            }

            let renaming = Fixture(medium: medium, threads: threads, layout: layout)
            Benchmark("rename same dir (\(label))", configuration: configuration) { benchmark in
                renaming.parallel(ops) { t, n in
                    // Each worker renames its own file along a chain of fresh names.
                    for _ in 0..<n {
                        let from = entryName(t, renaming.counters[t] - 1)
                        let to = entryName(t, renaming.counters[t])
                        try renaming.store.rename(renaming.dirs[t], from, renaming.dirs[t], to)
                        renaming.counters[t] += 1
                    }
                }
            } setup: {
                try renaming.open(poolSize: poolSize, populate: 10_000 / threads)
            } teardown: {
                renaming.close()
            }

            let unlinking = Fixture(medium: medium, threads: threads, layout: layout)
            Benchmark("unlink (\(label))", configuration: configuration) { benchmark in
                // Creating the victims is not measured. Each worker touches only its own slot.
                unlinking.parallel(ops) { t, n in
                    unlinking.victims[t] = try (0..<n).map { _ in try unlinking.create(t) }
                }
                benchmark.startMeasurement()
                unlinking.parallel(ops) { t, _ in
                    for name in unlinking.victims[t] { try unlinking.store.unlink(unlinking.dirs[t], name) }
                }
                benchmark.stopMeasurement()
            } setup: {
                try unlinking.open(poolSize: poolSize, populate: 10_000 / threads)
            } teardown: {
                unlinking.close()
            }
        }
    }

    // The directory index at scale: lookups among 1,000,000 entries of one directory.
    let huge = Fixture(medium: .shm, threads: 1, layout: .separate)
    Benchmark("lookup hit (shm 1 thread, 1,000,000-entry dir)",
              configuration: .init(metrics: [.throughput, .wallClock], scalingFactor: .kilo, maxDuration: .seconds(2),
                                   maxIterations: 2000, skip: !Medium.shm.runnable)) { benchmark in
        var i = huge.counters[0]
        for _ in benchmark.scaledIterations {
            i = (i &+ 1) & (huge.sample.count - 1)
            blackHole(try huge.store.lookup(huge.dirs[0], huge.sample[i]))
        }
        huge.counters[0] = i
    } setup: {
        try huge.open(poolSize: 2 << 30, populate: 0)
        let start = Timestamp.now()
        for _ in 0..<1_000_000 { try huge.create(0) }
        let seconds = Double(Timestamp.now().seconds - start.seconds)
        print("populated 1,000,000 entries in ~\(Int(seconds)) s")
        var g = SystemRandomNumberGenerator()
        huge.sample = (0..<65536).map { _ in entryName(0, Int.random(in: 0..<1_000_000, using: &g)) }
        huge.counters[0] = 0
    } teardown: {
        huge.close()
    }
}
