import ArgumentParser
import Glibc
import PMFSMetadata

/// pmfs-damage-fuzz: damages copies of a real pool, randomly and structure by
/// structure, and checks that pmfs survives it. Each seed: copy the pristine
/// pool and data file, damage the pool, then in a child process (so a trap is
/// seen, not suffered) open it as pmfsd does and walk, read and change the
/// whole tree under a time limit (a hang is a failure too); the data device's
/// header must be unchanged afterwards. Then `fsck.pmfs -y` must repair the
/// pool, `fsck.pmfs -n` must find it clean, and a second walk must meet no
/// damage. A failing seed is kept for replay with --first-seed N --iterations 1.
struct DamageFuzz: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmfs-damage-fuzz",
        abstract: "Damage real pmfs pools and check that the engine fails requests, never the process, and fsck.pmfs repairs.",
        subcommands: [Run.self, Walk.self, WalkMount.self], defaultSubcommand: Run.self)
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run seeds (the default).")

    @Option(help: "First seed.") var firstSeed: UInt64 = 1
    @Option(help: "Seeds to run.") var iterations: Int = 100
    @Option(help: "Stop starting seeds after this many seconds (0 = no limit).") var seconds: Double = 0
    @Option(help: "Seconds a walk may take before it counts as a hang.") var timeout: Double = 30
    @Option(help: "Where pools are made (a tmpfs: PMEM_IS_PMEM_FORCE=1 is set).") var directory: String = "/dev/shm"
    @Flag(help: "Print every seed's damage and outcome.") var verbose = false
    @Option(help: "Walk through the engine in a child (engine), or have pmfsd serve the pool on a host mount and walk that (mount).")
    var through: WalkPath = .engine

    enum WalkPath: String, ExpressibleByArgument { case engine, mount }

    func run() throws {
        setenv("PMEM_IS_PMEM_FORCE", "1", 1)
        setenv("PMEMOBJ_CONF", "sds.at_create=0", 1)
        let work = "\(directory)/pmfs-damage-fuzz-\(getpid())"
        guard mkdir(work, 0o700) == 0 else { throw FuzzError("cannot create \(work)") }
        defer { removeTree(work) }
        let fsck = siblingExecutable("fsck.pmfs")
        guard access(fsck, X_OK) == 0 else { throw FuzzError("\(fsck) not built (swift build builds it)") }
        if through == .mount {
            guard access(siblingExecutable("pmfsd"), X_OK) == 0 else { throw FuzzError("pmfsd not built beside this tool") }
            guard mkdir("\(work)/mnt", 0o755) == 0 else { throw FuzzError("cannot create \(work)/mnt") }
        }
        let fixture = try Fixture.make(directory: work)
        let start = now()
        var failures: [String] = []
        var outcomes: [String: Int] = [:]
        var done = 0
        for seed in firstSeed..<(firstSeed + UInt64(iterations)) {
            if seconds > 0 && now() - start > seconds { break }
            let result = try runSeed(seed, fixture, work, fsck)
            done += 1
            if result.failure == nil { outcomes[result.outcome, default: 0] += 1 }
            if verbose || result.failure != nil {
                print("seed \(seed): \(result.failure.map { "FAILED: \($0)" } ?? result.outcome)\n  damage: \(result.damage.joined(separator: "; "))\n  \(result.detail)")
            }
            if let f = result.failure { failures.append("seed \(seed): \(f)") }
        }
        let summary = outcomes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        print("pmfs-damage-fuzz: seeds \(firstSeed)..<\(firstSeed + UInt64(done)) in \(Int(now() - start)) s: \(summary); \(failures.count) failed")
        if !failures.isEmpty {
            for f in failures { print("  \(f)") }
            throw ExitCode(1)
        }
    }

    struct SeedResult {
        var outcome = ""
        var failure: String?
        var damage: [String] = []
        var detail = ""
    }

    func runSeed(_ seed: UInt64, _ fixture: Fixture, _ work: String, _ fsck: String) throws -> SeedResult {
        let pool = "\(work)/seed.pool", data = "\(work)/seed.data", report = "\(work)/walk.txt"
        try fixture.copy(to: pool, data)
        var result = SeedResult()
        do {
            let raw = try PersistentPool.open(path: pool)
            defer { raw.close() }
            var damager = try PoolDamager(pool: raw)
            try damager.damage(seed: seed)
            result.damage = damager.log
        }
        let header = try readHeaderBlock(data)
        let keep = { (why: String) -> String in
            let kept = "\(directory)/pmfs-damage-seed-\(seed).pool"
            try? copyFile(pool, kept)
            return "\(why) (damaged pool kept at \(kept))"
        }
        // 1. The damaged pool: served and walked in a child.
        unlink(report)
        let walk = self.walk(pool, data, work, report, tag: "damaged")
        result.detail = "walk: \(readText(report))"
        switch walk {
        case .walked(.exited(0)): result.outcome = "walked clean"
        case .walked(.exited(2)): result.outcome = "walked with errors"
        case .walked(.exited(3)): result.outcome = "open refused"
        case .walked(.exited(let c)): result.failure = keep("walk exited \(c)"); return result
        case .walked(.signalled(let s)): result.failure = keep("walk killed by signal \(s) (a trap)"); return result
        case .walked(.timedOut): result.failure = keep("walk hung (no answer in \(timeout) s)"); return result
        case .daemon(let why): result.failure = keep(why); return result
        }
        guard try readHeaderBlock(data) == header else { result.failure = keep("the data device header was overwritten"); return result }
        // A write past the device's end would have grown the data file.
        guard fileSize(data) == Fixture.dataBlocks * 4096 else { result.failure = keep("the data file grew: a write went past the device"); return result }
        // 2. fsck.pmfs -y repairs; -n then finds nothing.
        let repair = spawn(fsck, ["-y", "-f", pool], timeout: timeout, output: "\(work)/fsck-y.txt")
        switch repair {
        case .exited(0), .exited(1): break
        case .exited(8):
            // A superblock the checker refuses (version, features): nothing pmfs could serve either.
            result.outcome += ", fsck refused"
            guard walk == .walked(.exited(3)) else { result.failure = keep("fsck.pmfs -y could not check a pool the engine opened: \(readText("\(work)/fsck-y.txt").suffix(300))"); return result }
            return result
        default: result.failure = keep("fsck.pmfs -y: \(repair): \(readText("\(work)/fsck-y.txt").suffix(500))"); return result
        }
        let check = spawn(fsck, ["-n", "-f", pool], timeout: timeout, output: "\(work)/fsck-n.txt")
        guard check == .exited(0) else {
            result.failure = keep("fsck.pmfs -n after -y: \(check): \(readText("\(work)/fsck-n.txt").suffix(500))")
            return result
        }
        // 3. The repaired pool serves without damage.
        unlink(report)
        let again = self.walk(pool, data, work, report, tag: "repaired")
        guard again == .walked(.exited(0)) else { result.failure = keep("walk after repair: \(again): \(readText(report))"); return result }
        result.outcome += ", repaired"
        return result
    }
}

struct WalkMount: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "walk-mount", abstract: "Child: walk a mounted tree with system calls (exit 0 clean, 2 errors).")
    @Option var root: String
    @Option var report: String
    @Option var tag: String = "x"

    func run() throws {
        let summary = MountWalker.run(root: root, tag: tag)
        writeText(report, summary)
        throw ExitCode(summary.contains("errors: none") ? 0 : 2)
    }
}

struct Walk: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Child: open as pmfsd does and walk everything (exit 0 clean, 2 errors, 3 not opened).")
    @Option var pool: String
    @Option var data: String
    @Option var report: String
    @Option var tag: String = "x"

    func run() throws {
        do {
            let summary = try Walker.run(pool: pool, data: data, tag: tag)
            writeText(report, summary)
            throw ExitCode(summary.contains("errors: none") ? 0 : 2)
        } catch let e as ExitCode {
            throw e
        } catch {
            writeText(report, "not opened: \(error)")
            throw ExitCode(3)
        }
    }
}

DamageFuzz.main()
