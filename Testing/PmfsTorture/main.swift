import ArgumentParser
import Glibc
import PMFSMetadata

/// The child process of the crash tests: opens a pool, reads its tree as the
/// starting model, and runs random namespace operations until killed (or for
/// --ops operations). Each operation is logged as "BEGIN n <op>" before and
/// "END n" / "FAIL n errno" after, with write(2), so a kill -9 leaves a log
/// that says exactly which operation may have been cut.
struct TortureCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmfs-torture",
        abstract: "Run random pmfs namespace operations against a pool until killed.")

    @Option(help: "The metadata pool (already formatted).")
    var pool: String

    @Option(help: "Seed of the operation sequence.")
    var seed: UInt64

    @Option(help: "Operation log (appended).")
    var log: String

    @Option(help: "Operations to run; 0 = until killed.")
    var ops: Int = 0

    @Option(help: "Stop adding entries beyond this many.")
    var maxEntries: Int = 300

    @Option(help: "Percent of operations that snapshot a tree while the tree is below --max-entries (at least the base mix's 1).")
    var snapshotPercent: Int = 1

    @Option(help: "Kill this process with SIGKILL at a random moment of its Nth snapshot (0 = never; a kill point for the crash tests).")
    var dieInSnapshot: Int = 0

    @Option(help: "Compare the whole tree with the model every N operations (0 = never; for replaying a failure).")
    var verifyEvery: Int = 0

    func run() throws {
        let log = try OperationLog(path: log)
        let store: MetadataStore
        do {
            store = try MetadataStore.open(poolPath: pool)
        } catch {
            log.write("ERROR 0 open: \(error)")
            throw ExitCode(4)
        }
        log.write("OPEN recovered=\(store.recoveredFromUncleanShutdown) orphans=\(store.reclaimedOrphans)")
        let (model, problems) = try TortureModel.read(from: store)
        if !problems.isEmpty {
            log.write("ERROR 0 tree: \(problems.joined(separator: "; "))")
            throw ExitCode(4)
        }
        var runner = TortureRunner(store: store, model: model, seed: seed, maxEntries: maxEntries,
                                     snapshotPercent: max(0, min(100, snapshotPercent)))
        if let failure = try runner.run(count: ops, log: log, verifyEvery: verifyEvery, dieInSnapshot: dieInSnapshot) {
            let message = Array("pmfs-torture: seed \(seed): \(failure)\n".utf8)
            _ = message.withUnsafeBytes { Glibc.write(2, $0.baseAddress!, $0.count) }
            throw ExitCode(3)
        }
        try store.close()
        log.write("DONE \(runner.counts)")
    }
}

TortureCommand.main()
