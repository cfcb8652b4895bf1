import ArgumentParser
import Glibc
import PMFSCheck

/// fsck.pmfs: checks (and with -y repairs) a pmfs metadata pool. Exit codes as
/// e2fsck: 0 clean, 1 errors corrected, 4 errors left uncorrected, 8 operational
/// error, 16 usage error. Never prompts: without -y nothing is changed.
struct FsckPmfs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fsck.pmfs",
        abstract: "Check a pmfs metadata pool and optionally repair it.",
        discussion: """
            Without -n or -y the pool is only checked (as -n). The pool must not be in use.
            Exit status: 0 clean, 1 errors corrected, 4 errors left uncorrected, 8 operational error.
            """
    )

    @Flag(name: .customShort("n"), help: "Check only; change nothing (answer 'no' to every fix).")
    var checkOnly = false

    @Flag(name: .customShort("y"), help: "Repair every problem found (answer 'yes' to every fix).")
    var repair = false

    @Flag(name: .customShort("f"), help: "Check even if the pool was closed cleanly.")
    var force = false

    @Flag(name: .customShort("v"), help: "Verbose: print the passes and progress.")
    var verbose = false

    @Argument(help: "The metadata pool file.")
    var pool: String

    func validate() throws {
        if checkOnly && repair { throw ValidationError("-n and -y are mutually exclusive") }
    }

    func run() throws {
        // Progress goes to stderr, and only where someone watches it.
        let showProgress = verbose || isatty(STDERR_FILENO) != 0
        var options = CheckOptions(repair: repair, force: force)
        if showProgress {
            options.progress = { @Sendable line in printError(line) }
        }
        let report: CheckReport
        do {
            report = try FileSystemChecker(poolPath: pool).run(options)
        } catch {
            printError("fsck.pmfs: \(error)")
            print("pmfs \(pool): check aborted: \(error)")
            Glibc.exit(8)
        }
        for p in report.problems {
            let answer = p.fixed ? "yes" : (repair ? "no (repair failed)" : "no")
            print("\(p.code): \(p.message). Fix (\(p.fix))? \(answer)")
        }
        if report.exitCode == 8 {
            printError("fsck.pmfs: \(report.summary)")
        }
        if report.exitCode == 1 {
            print("\n***** POOL WAS MODIFIED *****")
        }
        print(report.summary)
        Glibc.exit(report.exitCode)
    }

    /// Parse errors exit 16 (e2fsck's usage error), not ArgumentParser's 64.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }
            if error is ValidationError || code == .validationFailure {
                printError(fullMessage(for: error))
                Glibc.exit(16)
            }
            exit(withError: error)
        }
    }
}

/// Writes a line to stderr (unbuffered, and no shared C `stderr` global).
func printError(_ line: String) {
    var text = line + "\n"
    text.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

FsckPmfs.main()
