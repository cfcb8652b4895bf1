// pmfsctl: asks a running pmfsd (its --control socket) what it serves.
import ArgumentParser
import FoundationEssentials
import Glibc
import PMFSControl

struct ControlOptions: ParsableArguments {
    @Option(help: ArgumentHelp("pmfsd's control socket (else $PMFS_CONTROL, else \(ControlProtocol.defaultPath)).", valueName: "path"))
    var control: String?

    @Flag(help: "Print the daemon's JSON response instead of a table.")
    var json = false

    /// With --json, prints the daemon's response as it came and returns true.
    func printedJSON(_ response: ControlResponse) -> Bool {
        guard json else { return false }
        print(String(decoding: ControlProtocol.encode(response).dropLast(), as: UTF8.self))
        return true
    }

    func ask(_ command: String) throws -> ControlResponse {
        try ask(ControlRequest(command: command))
    }

    func ask(_ request: ControlRequest) throws -> ControlResponse {
        do {
            return try ControlClient(path: ControlProtocol.path(explicit: control)).callOK(request)
        } catch {
            var text = "pmfsctl: \(error)\n"
            text.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
            throw ExitCode.failure
        }
    }
}

struct PmfsCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmfsctl",
        abstract: "Show what a running pmfsd serves and its statistics, snapshot trees, flush its cache, reload its configuration (over its --control socket; root only).",
        subcommands: [Info.self, Sessions.self, Df.self, Stat.self, Stats.self, Snapshot.self, Flush.self, Reload.self, EndSession.self])
}

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The pool, the host mount and every guest socket with its export.")
    @OptionGroup var options: ControlOptions

    func run() throws {
        let response = try options.ask("info")
        if options.printedJSON(response) { return }
        guard let info = response.info else { return }
        print("pmfsd \(info.version), pid \(info.pid)")
        print("pool   \(info.pool)")
        print("data   \(info.data)")
        print("mount  \(info.mount ?? "(none)")")
        print("")
        print(table(["LISTENER", "SOCKET", "EXPORT", "ACCESS", "CACHE", "LOCKS", "FROM"], info.exports.map {
            [String($0.id), $0.socket, $0.export, $0.readOnly ? "ro" : "rw", $0.cache, $0.locks, $0.origin]
        }))
    }
}

struct Sessions: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Each FUSE session (the host mount and every guest socket): connected since, requests, open handles, inodes and locks held, queues.")
    @OptionGroup var options: ControlOptions
    @Option(help: ArgumentHelp("Ask twice, this many seconds apart, and show each session's requests per second.", valueName: "seconds"))
    var rate: Double?

    func validate() throws {
        if let rate, !(rate > 0 && rate <= 3600) { throw ValidationError("--rate must be more than 0 and at most 3600 seconds") }
    }

    func run() throws {
        var response = try options.ask("sessions")
        var perSecond: [UInt64: Double] = [:]
        if let rate {
            let first = response.sessions ?? []
            usleep(useconds_t(rate * 1_000_000))
            response = try options.ask("sessions")
            for now in response.sessions ?? [] {
                guard let before = first.first(where: { $0.session == now.session })?.requests, let after = now.requests, after >= before else { continue }
                perSecond[now.session] = Double(after - before) / rate
            }
        }
        if options.printedJSON(response) { return }
        var header = ["SESSION", "LISTENER", "SOCKET", "EXPORT", "CONNECTED", "REQUESTS"]
        if rate != nil { header.append("REQ/S") }
        header += ["HANDLES", "INODES", "LOCKS", "QUEUES"]
        print(table(header, (response.sessions ?? []).map { s in
            var row = [String(s.session), s.listener.map(String.init) ?? "-", s.socket, s.export,
                       s.since.map(timestamp) ?? "no", s.requests.map(String.init) ?? "-"]
            if rate != nil { row.append(perSecond[s.session].map { String(Int($0.rounded())) } ?? "-") }
            row += [String(s.openHandles), String(s.heldInodes), s.lockRecords.map(String.init) ?? "-", s.queues.map(String.init) ?? "-"]
            return row
        }))
    }
}

struct Snapshot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make DST a copy of the directory tree SRC whose files share their blocks with SRC's (copy-on-write).",
        discussion: """
            SRC and DST are paths inside the served file system: relative to its root (base/vm1), or absolute \
            under pmfsd's host mount (/mnt/pmfs/base/vm1). DST must not exist; its parent must. The copy is one \
            point of SRC: writes in flight finish first, later ones wait until it is made. With --read-only \
            every change to the copy fails with EROFS.
            """)
    @OptionGroup var options: ControlOptions
    @Argument(help: "The tree to copy.") var source: String
    @Argument(help: "The new directory.") var target: String
    @Flag(help: "Make a read-only snapshot instead of a writable clone.") var readOnly = false

    func run() throws {
        let response = try options.ask(ControlRequest(command: "snapshot", source: source, target: target, readOnly: readOnly))
        if options.printedJSON(response) { return }
        guard let s = response.snapshot else { return }
        print("\(target): \(s.readOnly ? "read-only snapshot" : "clone") of \(source), \(s.inodes) inodes (\(s.directories) directories, "
              + "\(s.files) files), \(s.sharedBlocks) blocks shared, writers held \((s.milliseconds * 10).rounded() / 10) ms")
    }
}

struct Flush: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write back every change the daemon's cache holds and flush the data device (as syncfs would, for every session).")
    @OptionGroup var options: ControlOptions

    func run() throws {
        let response = try options.ask("flush")
        if options.printedJSON(response) { return }
        guard let f = response.flush else { return }
        print("flushed: \(f.dirtyBytes / 1024) KiB of cached changes written back, device flushed, in \((f.milliseconds * 10).rounded() / 10) ms")
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read pmfsd's --config file again and apply it, as SIGHUP does; a refused file is reported (exit 1) and changes nothing.")
    @OptionGroup var options: ControlOptions

    func run() throws {
        let response = try options.ask("reload")
        if options.printedJSON(response) { return }
        print(response.message ?? "applied")
    }
}

struct EndSession: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "end-session",
        abstract: "End the session of the guest connected on a listener, as its going away would; the socket keeps listening.",
        discussion: """
            The guest's device stops answering until its VM connects again (QEMU's chardev reconnect=) or restarts; \
            the session's open files, locks and inode references are released. LISTENER is a number from pmfsctl info.
            """)
    @OptionGroup var options: ControlOptions
    @Argument(help: "The listener (pmfsctl info).") var listener: Int

    func run() throws {
        let response = try options.ask(ControlRequest(command: "end-session", listener: listener))
        if options.printedJSON(response) { return }
        print(response.message ?? "ended")
    }
}

/// Columns padded to their widest cell.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = header.indices.map { c in all.map { $0[c].count }.max() ?? 0 }
    return all.map { row in
        row.enumerated().map { c, cell in c == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[c] - cell.count) }
            .joined(separator: "  ")
    }.joined(separator: "\n")
}

/// "since 2026-12-03 06:10:00 UTC".
func timestamp(_ seconds: Double) -> String {
    var t = time_t(seconds)
    var parts = tm()
    gmtime_r(&t, &parts)
    var buffer = [CChar](repeating: 0, count: 32)
    let n = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M:%S UTC", &parts)
    return "since " + String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

PmfsCtl.main()
