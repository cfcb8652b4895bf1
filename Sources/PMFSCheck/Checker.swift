import CPMDK
import Glibc
import PMFSMetadata

/// How to check: report only (the default, as `fsck -n`) or repair (`fsck -y`).
public struct CheckOptions: Sendable {
    /// Apply the fix of every problem found. Without it the pool is not written.
    public var repair: Bool
    /// Progress lines ("Pass 1: ...", inode counts on large pools).
    public var progress: (@Sendable (String) -> Void)?
    /// Check even a pool that was closed cleanly. `fsck.pmfs` without `-f`
    /// clears it, as e2fsck skips clean file systems; library callers check always.
    public var force: Bool

    public init(repair: Bool = false, progress: (@Sendable (String) -> Void)? = nil, force: Bool = true) {
        self.repair = repair
        self.progress = progress
        self.force = force
    }
}

/// One inconsistency: what was found, what the fix is, whether it was applied.
public struct CheckProblem: Sendable {
    /// Stable identifier (see `ProblemCode`), e.g. "DIR_ENTRY_COUNT".
    public var code: String
    /// What is wrong, naming the inode / offset / block involved.
    public var message: String
    /// Whether the fix was applied (only ever with `repair`).
    public var fixed: Bool
    /// What the fix does (applied or not).
    public var fix: String

    public init(code: String, message: String, fixed: Bool, fix: String = "") {
        self.code = code
        self.message = message
        self.fixed = fixed
        self.fix = fix
    }
}

public struct CheckReport: Sendable {
    public var problems: [CheckProblem]
    /// Inodes in use, directories among them, and data blocks used by files.
    public var inodes: UInt64
    public var directories: UInt64
    public var usedBlocks: UInt64
    /// As e2fsck: 0 clean, 1 errors corrected, 4 errors left uncorrected, 8 operational error.
    public var exitCode: Int32
    /// One line: "pmfs POOL: N inodes, N directories, N blocks used, clean".
    public var summary: String
}

/// Errors that stop a check before it can look at the file system.
public enum CheckError: Error, CustomStringConvertible {
    case cannotOpen(path: String, reason: String)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let reason): return "cannot open pool \(path): \(reason)"
        }
    }
}

/// The checker behind `fsck.pmfs`: opens the pool directly (not through
/// MetadataStore, which refuses damaged pools) and runs the numbered passes.
/// The pool must not be open elsewhere (libpmemobj's file lock enforces it).
public final class FileSystemChecker {
    public let poolPath: String

    public init(poolPath: String) {
        self.poolPath = poolPath
    }

    /// Runs every pass. Throws only when the pool cannot be opened at all; damage
    /// that stops the check (a superblock that is not pmfs) comes back as exit 8.
    public func run(_ options: CheckOptions) throws -> CheckReport {
        let pool: PersistentPool
        do {
            pool = try PersistentPool.open(path: poolPath)
        } catch let error as PoolError {
            if case .cannotOpen(_, let reason) = error {
                // libpmemobj locks the pool file: EAGAIN means another process has it open.
                let inUse = reason.contains("Resource temporarily unavailable")
                throw CheckError.cannotOpen(path: poolPath, reason: inUse ? "it is in use by another process" : reason)
            }
            throw CheckError.cannotOpen(path: poolPath, reason: "\(error)")
        }
        defer { pool.close() }
        let run = CheckRun(pool: pool, options: options)
        run.execute()
        return run.report(path: poolPath)
    }
}

extension CheckRun {
    /// Pass order matters: each pass trusts what earlier passes validated (or
    /// repaired), so later passes never follow a reference that was found bad.
    func execute() {
        progress("Pass 0: Checking the superblock and pool objects")
        guard pass0Superblock() else { return }
        if !options.force && sb.pointee.state == PMFS_STATE_CLEAN && problems.isEmpty {
            progress("pool was closed cleanly: not checked (force a check with -f)")
            skippedClean = true
            quickCount()
            return
        }
        progress("Pass 1: Checking inodes, extent trees, symlinks and xattrs")
        guard pass1Inodes() else { return }
        pass1cRefcounts()
        pass1bSharedBlocks()
        progress("Pass 2: Checking directory structure")
        pass2Directories()
        progress("Pass 3: Checking the orphan list and directory connectivity")
        pass3Orphans()
        pass3Connectivity()
        progress("Pass 4: Checking reference counts")
        pass4LinkCounts()
        progress("Pass 5: Checking the free-space bitmap")
        pass5SpaceMap()
        progress("Pass 6: Checking for leaked pool objects")
        pass6Objects()
        tally()
    }

    func report(path: String) -> CheckReport {
        let exit: Int32
        let state: String
        if let fatal {
            exit = 8
            state = "check aborted: \(fatal)"
        } else if problems.contains(where: { !$0.fixed }) {
            exit = 4
            state = options.repair ? "errors left uncorrected" : "errors found (not corrected: check only)"
        } else if !problems.isEmpty {
            exit = 1
            state = "errors corrected"
        } else {
            exit = 0
            state = "clean"
        }
        let summary: String
        if fatal != nil {
            summary = "pmfs \(path): \(state)"
        } else {
            summary = "pmfs \(path): \(liveInodes) inodes, \(directoryCount) directories, \(usedBlocks) blocks used, \(state)"
        }
        return CheckReport(problems: problems, inodes: liveInodes, directories: directoryCount,
                           usedBlocks: usedBlocks, exitCode: exit, summary: summary)
    }
}
