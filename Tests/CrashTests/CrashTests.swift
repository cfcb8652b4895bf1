import Glibc
import Logging
import PMFSMetadata
import SystemPackage
import PMFSCheck
import Testing
@testable import PmfsTorture

/// Crash tests: a child (pmfs-torture) runs random namespace operations on a
/// pool and is killed with SIGKILL at a random moment; the parent then checks
/// that the pool opens (and says it recovered), that the checker finds nothing,
/// and that the tree equals the model replayed from the child's log, with or
/// without the one operation the kill cut. The pool carries over to the next
/// child, so damage that only shows later is caught too.
///
/// PMFS_CRASH_ITERATIONS sets the total number of kills (default 150, spread
/// over the tests below); PMFS_CRASH_SEED fixes the seeds.
@Suite(.serialized)
struct CrashTests {
    static var totalKills: Int {
        getenv("PMFS_CRASH_ITERATIONS").flatMap { Int(String(cString: $0)) } ?? 150
    }

    @Test func killsAtStartup() throws {
        // Many of these land before or during open (the child needs ~5-20 ms to get there):
        // a pool cut during the recovery of the previous cut.
        try CrashHarness(name: "startup", seedSalt: 1)
            .run(iterations: max(1, Self.totalKills * 25 / 100), delayMicroseconds: 0..<30_000)
    }

    @Test func killsMidRun() throws {
        try CrashHarness(name: "midrun", seedSalt: 2)
            .run(iterations: max(1, Self.totalKills * 50 / 100), delayMicroseconds: 2_000..<100_000)
    }

    @Test func killsInLargerTrees() throws {
        try CrashHarness(name: "large", seedSalt: 3, maxEntries: 800)
            .run(iterations: max(1, Self.totalKills * 25 / 100), delayMicroseconds: 40_000..<250_000)
    }

    /// One operation in six a snapshot, beside copy-on-write writes, truncates,
    /// punches and unlinks of the files the copies share blocks with. Half the
    /// children kill themselves at a random moment of one of their first
    /// dozen snapshots (snapshots are quick: random kills from outside seldom land
    /// in one); the others are killed from outside as above.
    @Test func killsDuringSnapshots() throws {
        let kills = max(2, Self.totalKills * 25 / 100)
        let inside = try CrashHarness(name: "in-snapshot", seedSalt: 4, snapshotPercent: 16, dieInSnapshot: 1...12)
            .run(iterations: kills / 2, delayMicroseconds: 400_000..<500_000)
        let outside = try CrashHarness(name: "snapshot", seedSalt: 5, snapshotPercent: 16)
            .run(iterations: kills - kills / 2, delayMicroseconds: 5_000..<150_000)
        print("crash[snapshot]: operations cut, by kind: self-killed \(inside.sorted { $0.key < $1.key }), "
              + "killed from outside \(outside.sorted { $0.key < $1.key })")
        #expect(kills / 2 < 4 || inside["snapshot", default: 0] > 0, "no self-kill cut a snapshot")
    }

    /// The model mode without kills: each seed's run from an empty pool is
    /// compared with the model after every few operations (tree, read-only
    /// flags, and the refcount of every shared block), in this process.
    @Test func snapshotRunsMatchTheModel() throws {
        var seeds = SplitMix64(seed: CrashHarness.baseSeed(salt: 6))
        var total = TortureRunner.Counts()
        for _ in 0..<6 {
            let seed = seeds.next()
            let path = "/dev/shm/pmfs-torture-\(getpid())-\(seed)"
            defer { unlink(path + ".pool"); unlink(path + ".log") }
            let store = try MetadataStore.format(poolPath: path + ".pool", options: .init(poolSize: 24 << 20, dataBlocks: 1 << 14),
                                                 logger: quietLogger)
            defer { try? store.close() }
            let (model, _) = try TortureModel.read(from: store)
            var runner = TortureRunner(store: store, model: model, seed: seed, maxEntries: 300, snapshotPercent: 16)
            let failure = try runner.run(count: 1500, log: try OperationLog(path: path + ".log"), verifyEvery: 20)
            #expect(failure == nil, "seed \(seed) (replay: pmfs-torture --seed \(seed) --snapshot-percent 16 --ops 1500 --verify-every 1)")
            total.add(runner.counts)
        }
        print("torture model, 6 seeds × 1500 operations: \(total)")
        #expect(total.snapshots > 0 && total.copiesOnWrite > 0, "the runs made no snapshot or no copy-on-write")
    }

    /// The space check the tests above rely on sees a shared block whose other
    /// owner is not counted, and a block no file maps.
    @Test func blockAccountingFindsMissingOwners() throws {
        let path = "/dev/shm/pmfs-accounting-\(getpid()).pool"
        defer { unlink(path) }
        let store = try MetadataStore.format(poolPath: path, options: .init(poolSize: 24 << 20, dataBlocks: 1 << 10), logger: quietLogger)
        defer { try? store.close() }
        let dir = try store.mkdir(TortureModel.PMFS_ROOT, try FileName("d"), NewInode(mode: 0o755)).ino
        let file = try store.create(dir, try FileName("f"), NewInode(mode: UInt32(S_IFREG) | 0o644)).ino
        try store.allocateBlocks(file, start: 0, count: 4)
        let copy = try store.snapshot(dir, into: TortureModel.PMFS_ROOT, name: try FileName("s"), readOnly: true)
        let copiedFile = try store.lookup(copy.root, try FileName("f")).ino
        #expect(try TortureModel.blockAccounting(of: store, files: [dir, file, copy.root, copiedFile]).isEmpty)
        let withoutCopy = try TortureModel.blockAccounting(of: store, files: [file])
        #expect(withoutCopy.count == 4 && withoutCopy.allSatisfy { $0.contains("mapped 1 times, refcount says 2") }, "\(withoutCopy)")
        try store.unlink(copy.root, try FileName("f"))
        let leaked = try TortureModel.blockAccounting(of: store, files: [])
        #expect(leaked.first == "4 data blocks in use, files map 0", "\(leaked)")
    }
}

/// One pool, many children.
struct CrashHarness {
    let name: String
    let baseSeed: UInt64
    let maxEntries: Int
    let snapshotPercent: Int
    /// The child kills itself during its Nth snapshot, N drawn from here.
    let dieInSnapshot: ClosedRange<Int>?
    let poolPath: String
    let savedPath: String
    let logPath: String
    private let seedState: UInt64

    init(name: String, seedSalt: UInt64, maxEntries: Int = 300, snapshotPercent: Int = 1, dieInSnapshot: ClosedRange<Int>? = nil) {
        self.dieInSnapshot = dieInSnapshot
        self.name = name
        baseSeed = Self.baseSeed(salt: 0)
        seedState = Self.baseSeed(salt: seedSalt)
        self.maxEntries = maxEntries
        self.snapshotPercent = snapshotPercent
        let tag = "pmfs-crash-\(getpid())-\(name)"
        poolPath = "/dev/shm/\(tag).pool"
        savedPath = "/dev/shm/\(tag).before.pool"
        logPath = "/dev/shm/\(tag).log"
    }

    /// PMFS_CRASH_SEED (random when unset) mixed with `salt`; salt 0 gives the seed itself.
    static func baseSeed(salt: UInt64) -> UInt64 {
        let base = getenv("PMFS_CRASH_SEED").flatMap { UInt64(String(cString: $0)) } ?? chosenSeed
        guard salt != 0 else { return base }
        var g = SplitMix64(seed: base ^ (salt &* 0x9E37_79B9_7F4A_7C15))
        _ = g.next()
        return g.state
    }

    /// One random base seed for the whole test run, printed by each test.
    private static let chosenSeed = UInt64.random(in: 1...UInt64.max)

    /// Returns how many operations of each kind the kills cut.
    @discardableResult
    func run(iterations: Int, delayMicroseconds: Range<Int>) throws -> [String: Int] {
        // Inherited by the child: emulated PM with real flushes on /dev/shm.
        setenv("PMEM_IS_PMEM_FORCE", "1", 1)
        setenv("PMEMOBJ_CONF", "sds.at_create=0", 1)
        let torture = try productsDirectory() + "/pmfs-torture"
        for p in [poolPath, savedPath, logPath] { unlink(p) }

        let store = try MetadataStore.format(poolPath: poolPath, options: .init(poolSize: 24 << 20, dataBlocks: 1 << 14),
                                             logger: quietLogger)
        try store.close()
        var model = try readModel(expectRecovered: nil)
        var rng = SplitMix64(seed: seedState)
        var kills = 0, opsSeen = 0, beforeOpen = 0, inFlight = 0, cut = 0
        var cutKinds: [String: Int] = [:]
        print("crash[\(name)]: base seed \(baseSeed) (PMFS_CRASH_SEED), \(iterations) kills")

        for iteration in 0..<iterations {
            let childSeed = rng.next()
            let delay = delayMicroseconds.lowerBound + Int(rng.next() % UInt64(delayMicroseconds.count))
            let dieAt = dieInSnapshot.map { $0.lowerBound + Int(rng.next() % UInt64($0.count)) }
            let context = "crash[\(name)] base seed \(baseSeed), iteration \(iteration), child seed \(childSeed), kill after \(delay) µs"
                + (dieAt.map { " or in its snapshot \($0)" } ?? "")
            try copyFile(poolPath, savedPath)
            unlink(logPath)

            var arguments = ["--pool", poolPath, "--seed", "\(childSeed)", "--log", logPath,
                             "--max-entries", "\(maxEntries)", "--snapshot-percent", "\(snapshotPercent)"]
            if let dieAt { arguments += ["--die-in-snapshot", "\(dieAt)"] }
            let pid = try spawn(torture, arguments)
            if delay > 0 { usleep(UInt32(delay)) }
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            let log = readLines(logPath)
            guard status & 0x7f == SIGKILL else {
                Issue.record("\(context): child ended by itself (status \(status)) before the kill\n\(tail(log))\n\(keep())")
                return cutKinds
            }
            kills += 1

            let replay = parse(log)
            if let problem = replay.problem {
                Issue.record("\(context): \(problem)\n\(tail(log))\n\(keep())")
                return cutKinds
            }
            opsSeen += replay.finished.count + (replay.inFlight == nil ? 0 : 1)
            if !replay.opened { beforeOpen += 1 }
            if let (_, op) = replay.inFlight {
                inFlight += 1
                cutKinds[String(op.line.prefix { $0 != " " }), default: 0] += 1
            }

            // The image exactly as the kill left it (before open reclaims orphans).
            if let problems = try check() {
                Issue.record("\(context): the checker found, in the pool as the kill left it: \(problems)\n\(tail(log))\n\(keep())")
                return cutKinds
            }

            // Replay the log into the model: finished operations must have had the outcome logged.
            var expected = model
            for (n, op, outcome) in replay.finished {
                let predicted = expected.apply(op)
                guard predicted == outcome else {
                    Issue.record("\(context): op \(n) \(op.line) logged \(describe(outcome)), model says \(describe(predicted))\n\(keep())")
                    return cutKinds
                }
            }
            let actual: TortureModel
            do {
                actual = try readModel(expectRecovered: replay.opened ? true : nil)
            } catch {
                Issue.record("\(context): reopening after the kill: \(error)\n\(tail(log))\n\(keep())")
                return cutKinds
            }
            let observed = actual.observed()
            if let without = expected.difference(from: observed) {
                guard let (n, op) = replay.inFlight else {
                    Issue.record("\(context): pool differs from the log's finished operations: \(without)\n\(tail(log))\n\(keep())")
                    return cutKinds
                }
                var with = expected
                let outcome = with.apply(op)
                if outcome != nil || with.difference(from: observed) != nil {
                    Issue.record("""
                        \(context): op \(n) \(op.line) was cut and the pool is neither before nor after it
                          without it: \(without)
                          with it: \(outcome.map { "model says it fails with \($0)" } ?? with.difference(from: observed)!)
                        \(tail(log))
                        \(keep())
                        """)
                    return cutKinds
                }
                cut += 1
            }
            // The pool, not the model, starts the next round (it has the real inode numbers and times).
            model = actual
        }
        // And the last state after recovery and a clean close.
        if let problems = try check() {
            Issue.record("crash[\(name)] base seed \(baseSeed): the checker found, after the last recovery: \(problems)\n\(keep())")
            return cutKinds
        }
        print("crash[\(name)]: \(kills) kills (\(beforeOpen) before the child had opened the pool), \(opsSeen) operations logged, "
              + "\(inFlight) cut mid-operation (\(cut) of them found applied), final tree \(model.listing().count) entries")
        for p in [poolPath, savedPath, logPath] { unlink(p) }
        return cutKinds
    }

    /// The fsck library's verdict on the pool (not repairing): nil when clean.
    private func check() throws -> String? {
        let report = try FileSystemChecker(poolPath: poolPath).run(CheckOptions(repair: false))
        guard !report.problems.isEmpty || report.exitCode != 0 else { return nil }
        return "exit \(report.exitCode): " + report.problems.map { "\($0.code) \($0.message)" }.joined(separator: "; ")
    }

    /// Opens the pool, reads it back with its consistency checks, and closes it.
    private func readModel(expectRecovered: Bool?) throws -> TortureModel {
        let store = try MetadataStore.open(poolPath: poolPath, logger: quietLogger)
        defer { try? store.close() }
        if let expectRecovered, store.recoveredFromUncleanShutdown != expectRecovered {
            throw Failure("open says recoveredFromUncleanShutdown = \(store.recoveredFromUncleanShutdown), expected \(expectRecovered)")
        }
        let orphans = try store.orphans()
        guard orphans.isEmpty else { throw Failure("orphans left after open: \(orphans)") }
        let (model, problems) = try TortureModel.read(from: store)
        guard problems.isEmpty else { throw Failure("tree: \(problems.joined(separator: "; "))") }
        // Nothing leaks: every block in use is mapped by a file (shared ones as
        // often as their refcount says), every live inode has a name.
        let files = Set(model.listing().map(\.id))
        let accounting = try TortureModel.blockAccounting(of: store, files: files.map { UInt64($0) })
        guard accounting.isEmpty else { throw Failure("space: \(accounting.joined(separator: "; "))") }
        let stats = store.statistics()
        guard stats.totalInodes - stats.freeInodes == UInt64(files.count + 1) else {
            throw Failure("\(stats.totalInodes - stats.freeInodes) inodes in use, the tree has \(files.count + 1)")
        }
        return model
    }

    /// Keeps the pool from before and after the failing round, and the log, for replay.
    private func keep() -> String {
        let dir = "/tmp/pmfs-crash-failure-\(getpid())-\(name)"
        mkdir(dir, 0o755)
        try? copyFile(savedPath, dir + "/before.pool")
        try? copyFile(poolPath, dir + "/after.pool")
        try? copyFile(logPath, dir + "/ops.log")
        return "kept in \(dir); replay: cp before.pool r.pool; PMEM_IS_PMEM_FORCE=1 pmfs-torture --pool r.pool "
            + "--seed <child seed> --log r.log --max-entries \(maxEntries) --snapshot-percent \(snapshotPercent) --ops <last op number> --verify-every 1"
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    struct Replay {
        var opened = false
        var finished: [(Int, TortureOp, Errno?)] = []
        var inFlight: (Int, TortureOp)?
        var problem: String?
    }

    private func parse(_ lines: [String]) -> Replay {
        var r = Replay()
        var pending: (Int, TortureOp)?
        for line in lines {
            let t = line.split(separator: " ", maxSplits: 2).map(String.init)
            switch t.first {
            case "OPEN": r.opened = true
            case "BEGIN":
                guard pending == nil else { r.problem = "BEGIN after an unfinished BEGIN: \(line)"; return r }
                guard t.count == 3, let n = Int(t[1]), let op = TortureOp(line: t[2]) else { r.problem = "bad log line: \(line)"; return r }
                pending = (n, op)
            case "END", "FAIL":
                guard let (n, op) = pending, t.count >= 2, Int(t[1]) == n else { r.problem = "unmatched \(line)"; return r }
                var outcome: Errno? = nil
                if t[0] == "FAIL" {
                    guard t.count == 3, let e = Int32(t[2]) else { r.problem = "bad log line: \(line)"; return r }
                    outcome = Errno(rawValue: e)
                }
                r.finished.append((n, op, outcome))
                pending = nil
            default:
                r.problem = "child reported: \(line)"
                return r
            }
        }
        r.inFlight = pending
        return r
    }

    private func describe(_ e: Errno?) -> String { e.map { "\($0)" } ?? "success" }

    private func tail(_ lines: [String]) -> String {
        "log tail:\n  " + lines.suffix(8).joined(separator: "\n  ")
    }
}

// MARK: process and file helpers

/// Recovery after every kill is expected here: no warning per round.
let quietLogger = Logger(label: "pmfs.crash-tests", factory: { _ in SwiftLogNoOpLogHandler() })

/// The directory of the running test binary: SwiftPM puts the built executables there too.
func productsDirectory() throws -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { throw Errno(rawValue: errno) }
    let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    // On Linux the test bundle is one executable, <products>/<package>PackageTests.xctest.
    var path = exe
    while let slash = path.lastIndex(of: "/"), slash != path.startIndex {
        path = String(path[..<slash])
        if access(path + "/pmfs-torture", X_OK) == 0 { return path }
    }
    throw CrashHarness.Failure("pmfs-torture is not built beside the test binary \(exe)")
}

func spawn(_ program: String, _ arguments: [String]) throws -> pid_t {
    let argv = ([program] + arguments).map { strdup($0) }
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = (argv + [nil]).withUnsafeBufferPointer { p in
        PoolDescriptors.withSpawnLock { posix_spawn(&pid, program, nil, nil, UnsafeMutablePointer(mutating: p.baseAddress!), environ) }
    }
    guard rc == 0 else { throw Errno(rawValue: rc) }
    return pid
}

/// Complete lines only: a line without its newline was cut by the kill and never counted.
func readLines(_ path: String) -> [String] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return [] }
    defer { close(fd) }
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n <= 0 { break }
        data += chunk[0..<n]
    }
    guard let lastNewline = data.lastIndex(of: 0x0A) else { return [] }
    return data[..<lastNewline].split(separator: 0x0A, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
}

func copyFile(_ from: String, _ to: String) throws {
    let src = open(from, O_RDONLY | O_CLOEXEC)
    guard src >= 0 else { throw Errno(rawValue: errno) }
    defer { close(src) }
    let dst = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard dst >= 0 else { throw Errno(rawValue: errno) }
    defer { close(dst) }
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = read(src, &buffer, buffer.count)
        guard n >= 0 else { throw Errno(rawValue: errno) }
        if n == 0 { break }
        var done = 0
        while done < n {
            let w = buffer[done..<n].withUnsafeBytes { write(dst, $0.baseAddress!, $0.count) }
            guard w > 0 else { throw Errno(rawValue: errno) }
            done += w
        }
    }
}
