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
/// pmfsd and virtiofsd on the same media and prints the ratios.
@main
struct PmfsVhostBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmfs-bench-vhost",
        abstract: "Per-request latency of a vhost-user-fs back end (prints TSV: workload, p50 µs, p99 µs, ops/s).")

    @Option(help: "The back end's vhost-user socket.") var socket: String
    @Option(help: "Requests per workload.") var iterations = 2000
    @Option(help: "Warm-up requests per workload (not measured).") var warmup = 200
    @Option(help: "Writers for the parallel fsync workloads (each a file; all in flight at once).") var writers = 8
    @Option(help: "Name prefix for the files it makes (in the root of the export).") var prefix = "vbench"
    @Option(help: "Workloads, comma-separated (getattr, lookup, create, unlink, write-fsync, write-fdatasync, fsync-1, fsync-N).")
    var workloads = "getattr,lookup,create,unlink,write-fsync,write-fdatasync,fsync-1,fsync-N"
    @Option(help: ArgumentHelp("Instead of benchmarking: look up this path from the export's root (names separated by /, '..' allowed), print the file's first 60 KiB and exit (2 with the errno on stderr if a request fails).", valueName: "path"))
    var cat: String?
    @Option(help: "With --cat: keep the session and the file open this many seconds before exiting.")
    var hold: Double = 0
    @Option(help: ArgumentHelp("With --cat and --hold: once this host path exists (looked for while holding), read the file again through the same session and print it again.", valueName: "host-path"))
    var readAgainWhen: String?

    func run() throws {
        var options = VhostUserFrontEnd.Options()
        options.slotsPerQueue = max(16, writers)
        options.slotBytes = 64 << 10
        let frontEnd = try VhostUserFrontEnd(socketPath: socket, options: options)
        let client = FUSEClient(frontEnd)
        _ = try client.initialize()
        if let cat { return try Self.cat(cat, client, hold: hold, readAgainWhen: readAgainWhen) }
        let bench = Workloads(client: client, iterations: iterations, warmup: warmup, writers: writers, prefix: prefix)
        print("workload\tp50_us\tp99_us\tops_per_s")
        for name in workloads.split(separator: ",").map(String.init) {
            let result = try bench.run(name)
            print("\(name)\t\(format(result.p50))\t\(format(result.p99))\t\(format(result.opsPerSecond))")
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

/// Latency samples in ns → percentiles in µs.
func summarize(_ samples: [UInt64], operations: Int, elapsed: UInt64) -> Result {
    let sorted = samples.sorted()
    func at(_ q: Double) -> Double { sorted.isEmpty ? 0 : Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))]) / 1000 }
    return Result(p50: at(0.5), p99: at(0.99), opsPerSecond: elapsed == 0 ? 0 : Double(operations) * 1e9 / Double(elapsed))
}

struct Workloads {
    let client: FUSEClient
    let iterations: Int
    let warmup: Int
    let writers: Int
    let prefix: String
    let root: UInt64 = 1

    func run(_ name: String) throws -> Result {
        switch name {
        case "getattr": return try timed { _ in _ = try client.getattr(root) }
        case "lookup": return try lookup()
        case "create": return try create()
        case "unlink": return try unlink()
        case "write-fsync": return try writeFsync()
        case "write-fdatasync": return try writeFsync(dataOnly: true)
        case "fsync-1": return try parallelFsync(writers: 1)
        case "fsync-N": return try parallelFsync(writers: writers)
        default: throw ValidationError("unknown workload \(name)")
        }
    }

    /// Runs `body` warmup + iterations times, timing each of the last `iterations`.
    private func timed(_ body: (Int) throws -> Void) throws -> Result {
        for i in 0..<warmup { try body(-1 - i) }
        var samples = [UInt64]()
        samples.reserveCapacity(iterations)
        let start = now()
        for i in 0..<iterations {
            let t = now()
            try body(i)
            samples.append(now() - t)
        }
        return summarize(samples, operations: iterations, elapsed: now() - start)
    }

    private func lookup() throws -> Result {
        let name = "\(prefix)-lookup"
        let (entry, handle) = try createOrOpen(name)
        try client.release(entry.nodeid, handle: handle)
        let result = try timed { _ in _ = try client.lookup(parent: root, name) }
        try client.forget(entry.nodeid, count: UInt64(warmup + iterations + 1))
        return result
    }

    /// CREATE + RELEASE of a new file each time (the files stay for `unlink`).
    private func create() throws -> Result {
        try timed { i in
            let (entry, handle) = try client.create(parent: root, "\(prefix)-c\(i)")
            try client.release(entry.nodeid, handle: handle)
        }
    }

    private func unlink() throws -> Result {
        try timed { i in try client.unlink(parent: root, "\(prefix)-c\(i)") }
    }

    private func createOrOpen(_ name: String) throws -> (fuse_entry_out, UInt64) {
        if let e = try? client.lookup(parent: root, name) { return (e, try client.open(e.nodeid)) }
        let (e, h) = try client.create(parent: root, name)
        return (e, h)
    }

    /// A durable 4 KiB overwrite: WRITE then FSYNC, one after the other, as a
    /// database's commit; `dataOnly`: the FSYNC is an fdatasync (SQLite's and
    /// PostgreSQL's WAL default on Linux).
    private func writeFsync(dataOnly: Bool = false) throws -> Result {
        let (entry, handle) = try createOrOpen("\(prefix)-\(dataOnly ? "fdatasync" : "fsync")")
        let block = [UInt8](repeating: 0x5a, count: 4096)
        for i in 0..<256 { try client.write(entry.nodeid, handle: handle, offset: UInt64(i) * 4096, block) }
        try client.fsync(entry.nodeid, handle: handle)
        let result = try timed { i in
            try client.write(entry.nodeid, handle: handle, offset: UInt64((i & 255) * 4096), block)
            try client.fsync(entry.nodeid, handle: handle, dataOnly: dataOnly)
        }
        try client.release(entry.nodeid, handle: handle)
        return result
    }

    /// `writers` files, each written and fsynced in rounds with all fsyncs in
    /// flight at once (as `writers` guest processes committing together):
    /// fsyncs per second, and the latency of a whole round.
    private func parallelFsync(writers: Int) throws -> Result {
        var files: [(UInt64, UInt64)] = []
        for w in 0..<writers {
            let (e, h) = try createOrOpen("\(prefix)-p\(w)")
            files.append((e.nodeid, h))
        }
        let block = [UInt8](repeating: 0xa5, count: 4096)
        let ring = client.frontEnd.ring(client.queue)
        var samples = [UInt64]()
        let rounds = max(1, iterations / 4)
        var elapsed: UInt64 = 0
        for round in 0..<(rounds + warmup / 4) {
            for (node, handle) in files { try client.write(node, handle: handle, offset: UInt64((round & 63) * 4096), block) }
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
            let d = now() - t
            if round >= warmup / 4 { samples.append(d); elapsed += d }
        }
        for (node, handle) in files { try client.release(node, handle: handle) }
        return summarize(samples, operations: samples.count * writers, elapsed: elapsed)
    }
}
