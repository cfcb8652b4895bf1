// pmfsctl df, stat and stats: the served pool's space, one path's attributes,
// the daemon's running totals.
import ArgumentParser
import PMFSControl

struct Df: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Blocks and inodes of the served pool (total, used, free), shared blocks and the write-back cache, as pmfs-inspect df shows an offline pool.")
    @OptionGroup var options: ControlOptions

    func run() throws {
        let response = try options.ask("df")
        if options.printedJSON(response) { return }
        guard let d = response.df else { return }
        let blockSize = UInt64(d.blockSize)
        print(table(["", "TOTAL", "USED", "FREE", "USE%"], [
            row("blocks", total: d.totalBlocks, free: d.freeBlocks),
            row("inodes", total: d.totalInodes, free: d.freeInodes),
        ]))
        print("block size \(d.blockSize) bytes: \(mebibytes(d.totalBlocks, blockSize)) total, \(mebibytes(d.freeBlocks, blockSize)) free; "
              + "pool \(d.poolBytes >> 20) MiB")
        print(sharing(d))
        let c = d.cache
        print("cache: \(c.frames) frames of \(c.frameBytes) bytes (\(mebibytes(UInt64(c.frames), UInt64(c.frameBytes)))), "
              + "\(c.used) used, \(c.dirty) dirty")
    }

    func row(_ what: String, total: UInt64, free: UInt64) -> [String] {
        let used = total >= free ? total - free : 0
        return [what, String(total), String(used), String(free), percent(used, of: total)]
    }

    /// Rounded up, as df does: any use shows.
    func percent(_ used: UInt64, of total: UInt64) -> String {
        guard total > 0 else { return "-" }
        return "\(Int((Double(used) * 100 / Double(total)).rounded(.up)))%"
    }

    func sharing(_ d: SpaceInfo) -> String {
        guard let s = d.sharing else { return "shared blocks: unknown (\(d.sharingError ?? "not read"))" }
        guard s.blocks > 0 else { return "shared blocks: none" }
        let saved = s.references > s.blocks ? s.references - s.blocks : 0
        return "shared blocks: \(s.blocks) in \(s.runs) run(s), \(s.references) references; clones save \(saved) blocks "
            + "(\(mebibytes(saved, UInt64(d.blockSize))))"
    }
}

/// "12 MiB" (or "96 KiB" below a mebibyte): count × size, rounded down (clamped, never trapping).
func mebibytes(_ count: UInt64, _ size: UInt64) -> String {
    let (product, overflow) = count.multipliedReportingOverflow(by: size)
    let bytes = overflow ? UInt64.max : product
    return bytes < 1 << 20 ? "\(bytes >> 10) KiB" : "\(bytes >> 20) MiB"
}

struct Stat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Every attribute of one inode of the served file system, as pmfs-inspect stat shows an offline pool's.",
        discussion: """
            PATH is inside the served file system, as snapshot's SRC: relative to its root (vm1/disk.img) or absolute \
            under pmfsd's host mount (/mnt/pmfs/vm1/disk.img); no '..', no symbolic link followed (the last name may be \
            one: its own attributes are shown). pmfsd looks the names up in its pool, not through the mount.
            """)
    @OptionGroup var options: ControlOptions
    @Argument(help: "The path.") var path: String

    func run() throws {
        let response = try options.ask(ControlRequest(command: "stat", path: path))
        if options.printedJSON(response) { return }
        guard let a = response.stat else { return }
        print("      File: \(a.path)\(a.linkTarget.map { " -> \($0)" } ?? "")")
        print("      Type: \(a.type)\(a.readOnly ? "   (read-only snapshot)" : "")")
        print("     Inode: \(a.ino)   Generation: \(a.generation)")
        print("      Mode: \(AttributeText.permissions(a.mode)) (\(AttributeText.mode(a.mode)))   Links: \(a.links)")
        print("       Uid: \(a.uid)   Gid: \(a.gid)")
        print("      Size: \(a.size)   Blocks: \(a.blocks) (512-byte units)")
        if a.type == "character device" || a.type == "block device" {
            print("    Device: \(AttributeText.major(a.rdev)),\(AttributeText.minor(a.rdev))   (rdev \(a.rdev))")
        }
        print("     Flags: 0x\(String(a.flags, radix: 16))")
        for (label, t) in [("Access", a.atime), ("Modify", a.mtime), ("Change", a.ctime), (" Birth", a.btime)] {
            print("    \(label): \(AttributeText.time(t.seconds, t.nanoseconds))")
        }
        print("    Xattrs: \(a.xattrs.isEmpty ? "(none)" : a.xattrs.joined(separator: ", "))")
        if let e = a.extents {
            print("   Extents: \(e.mappedRuns) mapped run(s) within the size")
            print("    Shared: \(e.sharedBlocks) of \(e.mappedBlocks) mapped block(s) shared with clones (copied on write)")
        }
    }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The daemon's running totals: requests per session, transactions, fsyncs, device flushes, the cache; with --metrics, the registry's counters too.")
    @OptionGroup var options: ControlOptions
    @Flag(help: "Show the registry's samples that are zero as well.") var all = false

    func run() throws {
        let response = try options.ask("stats")
        if options.printedJSON(response) { return }
        guard let s = response.stats else { return }
        print(table(["SESSION", "NAME", "REQUESTS", "IN FLIGHT"], s.sessions.map {
            [String($0.session), $0.name, String($0.requests), String($0.inFlight)]
        }))
        print("")
        print(table(["TOTAL", "VALUE"], totals(s)))
        guard let metrics = s.metrics else {
            print("\n(no metrics registry: pmfsd runs without --metrics)")
            return
        }
        let shown = metrics.filter { all || !Self.isZero($0.value) }
        print("")
        print(table(["METRIC", "VALUE"], shown.map { [$0.series, $0.value] }))
        if shown.count < metrics.count { print("(\(metrics.count - shown.count) zero sample(s) not shown; --all shows them)") }
    }

    func totals(_ s: DaemonStatistics) -> [[String]] {
        var rows = [["pool transactions committed", String(s.transactionsCommitted)],
                    ["pool transactions aborted", String(s.transactionsAborted)],
                    ["fsyncs", String(s.fsyncs)],
                    ["device flushes", String(s.deviceFlushes)],
                    ["cache frames used", "\(s.cache.used) of \(s.cache.frames)"],
                    ["cache frames dirty", String(s.cache.dirty)]]
        if let h = s.hostTransport {
            rows += [["host requests via io_uring", String(h.viaRing)], ["host requests via /dev/fuse", String(h.viaDevice)],
                     ["host ring fsyncs grouped", "\(h.groupedFsyncs) in \(h.fsyncGroups) group commit(s)"]]
        }
        return rows
    }

    static func isZero(_ value: String) -> Bool { Double(value) == 0 }
}
