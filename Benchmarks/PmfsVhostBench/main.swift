import ArgumentParser
import CFUSE
import CVhost
import Glibc
import PMFSConcurrency
import VhostUserFrontEnd

/// Per-request latency of a vhost-user-fs back end, measured from the front
/// end's side (no guest kernel, no emulation): the time from making a request
/// available and kicking to seeing its reply in the used ring, woken by the
/// call eventfd as a guest would be. tools/bench/vhost.sh runs it against
/// pmfsd and virtiofsd on the same media and prints the ratios. Given several
/// sockets, it runs each workload on every back end in turns (rounds, the order
/// reversed every round), so that a disk whose speed drifts by the minute
/// weighs on each back end alike.
@main
struct PmfsVhostBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmfs-bench-vhost",
        abstract: "Per-request latency of vhost-user-fs back ends (prints TSV: [back end,] workload, p50 µs, p99 µs, ops/s).")

    @Option(help: "A back end's vhost-user socket; several: measured in turns, a back-end column first.")
    var socket: [String]
    @Option(help: "Names of the back ends in the output, one per --socket (default: their sockets).")
    var label: [String] = []
    @Option(help: "With several sockets: turns per workload (each back end runs 1/rounds of the requests per turn).")
    var rounds = 10
    @Option(help: "Requests per workload.") var iterations = 2000
    @Option(help: "Warm-up requests per workload (not measured).") var warmup = 200
    @Option(help: "Writers for the parallel fsync workloads (each a file; all in flight at once).") var writers = 8
    @Option(help: "Name prefix for the files it makes (in the root of the export).") var prefix = "vbench"
    @Option(help: "Workloads, comma-separated (getattr, lookup, create, unlink, read, write, write-fsync, write-fdatasync, fsync-1, fsync-N).")
    var workloads = "getattr,lookup,create,unlink,write-fsync,write-fdatasync,fsync-1,fsync-N"
    @Option(help: ArgumentHelp("Instead of benchmarking: look up this path from the export's root (names separated by /, '..' allowed), print the file's first 60 KiB and exit (2 with the errno on stderr if a request fails).", valueName: "path"))
    var cat: String?
    @Option(help: "With --cat: keep the session and the file open this many seconds before exiting.")
    var hold: Double = 0
    @Option(help: ArgumentHelp("With --cat and --hold: once this host path exists (looked for while holding), read the file again through the same session and print it again.", valueName: "host-path"))
    var readAgainWhen: String?

    func validate() throws {
        guard !socket.isEmpty else { throw ValidationError("give at least one --socket") }
        guard label.isEmpty || label.count == socket.count else { throw ValidationError("give one --label per --socket") }
        guard cat == nil || socket.count == 1 else { throw ValidationError("--cat takes one --socket") }
        guard rounds >= 1, iterations >= 1, warmup >= 0, writers >= 1 else { throw ValidationError("counts must be positive") }
    }

    func run() throws {
        var options = VhostUserFrontEnd.Options()
        options.slotsPerQueue = max(16, writers)
        options.slotBytes = 64 << 10
        let clients = try socket.map { path -> FUSEClient in
            let client = FUSEClient(try VhostUserFrontEnd(socketPath: path, options: options))
            _ = try client.initialize()
            return client
        }
        if let cat { return try Self.cat(cat, clients[0], hold: hold, readAgainWhen: readAgainWhen) }
        let benches = clients.map { Workloads(client: $0, iterations: iterations, warmup: warmup, writers: writers, prefix: prefix) }
        let names = label.isEmpty ? socket : label
        let several = benches.count > 1
        print((several ? "backend\t" : "") + "workload\tp50_us\tp99_us\tops_per_s")
        for workload in workloads.split(separator: ",").map(String.init) {
            let results = try Turns(rounds: several ? rounds : 1).measure(workload, on: benches)
            for (name, result) in zip(names, results) {
                print((several ? "\(name)\t" : "") + "\(workload)\t\(format(result.p50))\t\(format(result.p99))\t\(format(result.opsPerSecond))")
            }
        }
    }

    /// One file through the front end, as a guest's `cat` would: LOOKUP per name, OPEN, READ.
    static func cat(_ path: String, _ client: FUSEClient, hold: Double, readAgainWhen: String? = nil) throws {
        do {
            var node: UInt64 = 1
            for name in path.split(separator: "/") { node = try client.lookup(parent: node, String(name)).nodeid }
            let handle = try client.open(node, flags: UInt32(O_RDONLY))
            let bytes = try client.read(node, handle: handle, offset: 0, size: 60 << 10)   // reply and header fit a 64 KiB slot
            bytes.withUnsafeBytes { _ = write(STDOUT_FILENO, $0.baseAddress, $0.count) }
            if let signal = readAgainWhen {
                // A test's cue (a reload done): the same session must still answer.
                var waited = 0.0
                while access(signal, F_OK) != 0 && waited < hold { usleep(20_000); waited += 0.02 }
                let again = try client.read(node, handle: handle, offset: 0, size: 60 << 10)
                again.withUnsafeBytes { _ = write(STDOUT_FILENO, $0.baseAddress, $0.count) }
            } else if hold > 0 {
                usleep(UInt32(min(hold, 3600) * 1_000_000))
            }
            try client.release(node, handle: handle)
        } catch let f as FUSEClient.Failure {
            var text = "\(path): \(f)\n"
            text.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
            throw ExitCode(2)
        }
    }

    private func format(_ v: Double) -> String {
        var s = String(Int((v * 10).rounded()))
        if s.count == 1 { s = "0" + s }
        return String(s.dropLast()) + "." + String(s.last!)
    }
}


struct Result {
    var p50: Double
    var p99: Double
    var opsPerSecond: Double
}

func now() -> UInt64 { monotonicNanoseconds() }

/// Latency samples in ns → percentiles in µs; ops/s over the time the samples cover.
func summarize(_ samples: [UInt64], operationsPerSample: Int) -> Result {
    let sorted = samples.sorted()
    let elapsed = samples.reduce(0, +)
    func at(_ q: Double) -> Double { sorted.isEmpty ? 0 : Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))]) / 1000 }
    let operations = Double(samples.count * operationsPerSample)
    return Result(p50: at(0.5), p99: at(0.99), opsPerSecond: elapsed == 0 ? 0 : operations * 1e9 / Double(elapsed))
}

/// One workload prepared on one back end: `step(i)` does the i-th timed unit
/// (negative i: a warm-up) and returns the time it took; `finish` cleans up.
struct PreparedWorkload {
    var steps: Int
    var warmupSteps: Int
    var operationsPerStep = 1
    var step: (Int) throws -> UInt64
    var finish: () throws -> Void = {}
}

/// Runs a workload on every back end: all warm up first, then they take turns,
/// each doing the next slice of its steps; the order reverses every round so
/// that a steady drift of the media favours none.
struct Turns {
    let rounds: Int

    func measure(_ name: String, on benches: [Workloads]) throws -> [Result] {
        let runs = try benches.map { try $0.prepare(name) }
        for run in runs { for i in 0..<run.warmupSteps { _ = try run.step(-1 - i) } }
        var samples = runs.map { run -> [UInt64] in
            var s = [UInt64]()
            s.reserveCapacity(run.steps)
            return s
        }
        let steps = runs[0].steps
        let slice = max(1, (steps + rounds - 1) / rounds)
        for (round, first) in stride(from: 0, to: steps, by: slice).enumerated() {
            let order = round % 2 == 0 ? Array(runs.indices) : Array(runs.indices.reversed())
            for k in order {
                for i in first..<min(steps, first + slice) { samples[k].append(try runs[k].step(i)) }
            }
        }
        for run in runs { try run.finish() }
        return zip(runs, samples).map { summarize($1, operationsPerSample: $0.operationsPerStep) }
    }
}

struct Workloads {
    let client: FUSEClient
    let iterations: Int
    let warmup: Int
    let writers: Int
    let prefix: String
    let root: UInt64 = 1

    func prepare(_ name: String) throws -> PreparedWorkload {
        switch name {
        case "getattr": return timed { _ in _ = try client.getattr(root) }
        case "lookup": return try lookup()
        case "create": return create()
        case "unlink": return timed { i in try client.unlink(parent: root, "\(prefix)-c\(i)") }
        case "read": return try readOrWrite(reading: true)
        case "write": return try readOrWrite(reading: false)
        case "write-fsync": return try writeFsync()
        case "write-fdatasync": return try writeFsync(dataOnly: true)
        case "fsync-1": return try parallelFsync(writers: 1)
        case "fsync-N": return try parallelFsync(writers: writers)
        default: throw ValidationError("unknown workload \(name)")
        }
    }

    /// `iterations` steps (after `warmup` untimed ones), each `body` timed whole.
    private func timed(_ body: @escaping (Int) throws -> Void) -> PreparedWorkload {
        PreparedWorkload(steps: iterations, warmupSteps: warmup) { i in
            let t = now()
            try body(i)
            return now() - t
        }
    }

    private func lookup() throws -> PreparedWorkload {
        let name = "\(prefix)-lookup"
        let (entry, handle) = try createOrOpen(name)
        try client.release(entry.nodeid, handle: handle)
        var run = timed { [client, root] _ in _ = try client.lookup(parent: root, name) }
        run.finish = { [client, warmup, iterations] in try client.forget(entry.nodeid, count: UInt64(warmup + iterations + 1)) }
        return run
    }

    /// CREATE + RELEASE of a new file each time (the files stay for `unlink`).
    private func create() -> PreparedWorkload {
        timed { [client, root, prefix] i in
            let (entry, handle) = try client.create(parent: root, "\(prefix)-c\(i)")
            try client.release(entry.nodeid, handle: handle)
        }
    }

    private func createOrOpen(_ name: String) throws -> (fuse_entry_out, UInt64) {
        if let e = try? client.lookup(parent: root, name) { return (e, try client.open(e.nodeid)) }
        let (e, h) = try client.create(parent: root, name)
        return (e, h)
    }

    /// A 4 KiB READ or WRITE (an overwrite, not synced) of a 1 MiB file's
    /// blocks in turn, the file written once first.
    private func readOrWrite(reading: Bool) throws -> PreparedWorkload {
        let (entry, handle) = try createOrOpen("\(prefix)-rw")
        let block = [UInt8](repeating: 0x3c, count: 4096)
        for i in 0..<256 { try client.write(entry.nodeid, handle: handle, offset: UInt64(i) * 4096, block) }
        var run = timed { [client] i in
            let offset = UInt64((i & 255) * 4096)
            if reading {
                _ = try client.read(entry.nodeid, handle: handle, offset: offset, size: 4096)
            } else {
                _ = try client.write(entry.nodeid, handle: handle, offset: offset, block)
            }
        }
        run.finish = { [client] in try client.release(entry.nodeid, handle: handle) }
        return run
    }

    /// A durable 4 KiB overwrite: WRITE then FSYNC, one after the other, as a
    /// database's commit; `dataOnly`: the FSYNC is an fdatasync (SQLite's and
    /// PostgreSQL's WAL default on Linux).
    private func writeFsync(dataOnly: Bool = false) throws -> PreparedWorkload {
        let (entry, handle) = try createOrOpen("\(prefix)-\(dataOnly ? "fdatasync" : "fsync")")
        let block = [UInt8](repeating: 0x5a, count: 4096)
        for i in 0..<256 { try client.write(entry.nodeid, handle: handle, offset: UInt64(i) * 4096, block) }
        try client.fsync(entry.nodeid, handle: handle)
        var run = timed { [client] i in
            try client.write(entry.nodeid, handle: handle, offset: UInt64((i & 255) * 4096), block)
            try client.fsync(entry.nodeid, handle: handle, dataOnly: dataOnly)
        }
        run.finish = { [client] in try client.release(entry.nodeid, handle: handle) }
        return run
    }

    /// `writers` files, each written and fsynced in rounds with all fsyncs in
    /// flight at once (as `writers` guest processes committing together): a
    /// step is one round, its writes untimed; fsyncs per second, and the
    /// latency of a whole round.
    private func parallelFsync(writers: Int) throws -> PreparedWorkload {
        var files: [(UInt64, UInt64)] = []
        for w in 0..<writers {
            let (e, h) = try createOrOpen("\(prefix)-p\(w)")
            files.append((e.nodeid, h))
        }
        let block = [UInt8](repeating: 0xa5, count: 4096)
        let client = self.client
        let ring = client.frontEnd.ring(client.queue)
        let round = { (index: Int) throws -> UInt64 in
            let page = UInt64((index & 63) * 4096)
            for (node, handle) in files { try client.write(node, handle: handle, offset: page, block) }
            let t = now()
            var slots: [Int] = []
            for (node, handle) in files {
                var f = fuse_fsync_in()
                f.fh = handle
                let message = client.message(FUSE_FSYNC, nodeid: node, FUSEClient.bytes(f))
                guard let slot = ring.submit(message, replyCapacity: 64, kick: false) else { throw ValidationError("no slot") }
                slots.append(slot)
            }
            ring.kick()
            var done = 0
            while done < slots.count {
                for (_, reply) in ring.reapAny() {
                    let error = reply.count >= 16 ? reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: Int32.self) } : -EIO
                    guard error == 0 else { throw FUSEClient.Failure(opcode: FUSE_FSYNC.rawValue, errno: -error) }
                    done += 1
                }
                if done < slots.count { try ring.waitForCall(timeoutMilliseconds: 10_000) }
            }
            return now() - t
        }
        return PreparedWorkload(steps: max(1, iterations / 4), warmupSteps: warmup / 4, operationsPerStep: writers, step: { index in
            // Warm-up steps are negative; the page index wants a non-negative one.
            try round(index < 0 ? -index : index)
        }, finish: {
            for (node, handle) in files { try client.release(node, handle: handle) }
        })
    }
}
