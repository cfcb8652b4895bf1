import Benchmark
import CFUSE
import CoreMetrics
import FUSEProtocol
import Glibc
import PMFSCore
import PMFSData
import PMFSMetadata
import PMFSMetrics
import PMFSServer

// The request path without a transport: FUSE requests handed to
// FUSEServer.handle(_:_:later:) as the vhost-user back end hands
// them over (a guest's descriptor chain: the in-header and the arguments in
// separate buffers, a WRITE's data in a third; replies into the guest's
// writable buffers), in front of the real PMFSOperations over a pool on
// /dev/shm (PMEM_IS_PMEM_FORCE=1: emulated PM) and a data file on /dev/shm.
// The figure that matters here is heap allocations per request (malloc
// counters), beside the time. Each request also runs with pmfsd's metrics on
// (the swift-prometheus registry as pmfsd sets it up): its cost, in time and
// allocations, is the difference. tools/bench/request-path.sh runs it.

/// One file system and one session, ready for requests on a file `f`.
final class Served: @unchecked Sendable {
    let directory: String
    /// The metrics backend, when metrics are on.
    let registry: MetricsRegistry?
    var metadata: MetadataStore!
    var fs: FileDataTier!
    var server: FUSEServer!
    var node: UInt64 = 0
    var handle: UInt64 = 0
    var unique: UInt64 = 10
    let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 4096)
    let data = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
    let name: UnsafeMutableRawBufferPointer = {
        let n = UnsafeMutableRawBufferPointer.allocate(byteCount: 2, alignment: 1)
        n[0] = UInt8(ascii: "f"); n[1] = 0
        return n
    }()

    init(metrics: Bool) {
        registry = metrics ? MetricsRegistry() : nil
        directory = "/dev/shm/pmfs-reqbench-\(getpid())\(metrics ? "-metrics" : "")"
    }

    func open() throws {
        mkdir(directory, 0o755)
        let pool = directory + "/pool", file = directory + "/data"
        let blocks: UInt64 = 16384
        let fd = Glibc.open(file, O_CREAT | O_RDWR | O_TRUNC, 0o600)
        ftruncate(fd, off_t(blocks * 4096))
        Glibc.close(fd)
        unlink(pool)
        metadata = try MetadataStore.format(poolPath: pool, options: MetadataStore.FormatOptions(poolSize: 64 << 20, dataBlocks: blocks))
        try DataDeviceHeader(blockSize: 4096, blockCount: blocks, fsUUID: metadata.uuid, dataUUID: metadata.dataUUID).write(to: file)
        let factory: MetricsFactory = registry ?? NOOPMetricsHandler.instance
        fs = try FileDataTier(metadata: metadata, device: try DataDevice(path: file, metrics: factory), options: FileDataTier.Options(),
                            metrics: factory)
        server = FUSEServer(operations: PMFSOperations(metadata: metadata, fs: fs),
                            metrics: registry.map { FUSERequestMetrics(session: "bench", factory: $0) })
        var i = fuse_init_in()
        i.major = 7; i.minor = 38; i.flags = 0xFFFF_FFFF; i.flags2 = 0xFFFF_FFFF
        _ = request(FUSE_INIT, nodeid: 0, withUnsafeBytes(of: &i) { Array($0) })
        var c = fuse_create_in()
        c.flags = UInt32(O_RDWR); c.mode = 0o100644
        let created = request(FUSE_CREATE, nodeid: 1, withUnsafeBytes(of: &c) { Array($0) } + Array("f".utf8) + [0])
        node = created.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: fuse_entry_out.self).nodeid }
        handle = created.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16 + MemoryLayout<fuse_entry_out>.size, as: fuse_open_out.self).fh }
        memset(data.baseAddress!, 0x5a, data.count)
        for block in 0..<16 { write(offset: UInt64(block) * 4096) }
        fsync()
        checkRequests()
    }

    /// Ends the session and removes the pool and data file (each benchmark
    /// runs in a process of its own; a later one opens afresh).
    func close() {
        guard server != nil else { return }
        try? fs.shutdown()
        try? metadata.close()
        server = nil
        unlink(directory + "/pool"); unlink(directory + "/data"); rmdir(directory)
    }

    /// A whole request in one buffer (setup only): its reply.
    func request(_ opcode: fuse_opcode, nodeid: UInt64, _ body: [UInt8]) -> [UInt8] {
        var h = header(opcode, nodeid: nodeid, argumentBytes: body.count)
        var message = withUnsafeBytes(of: &h) { Array($0) } + body
        final class Box: @unchecked Sendable { var bytes: [UInt8] = [] }
        let out = Box()
        message.withUnsafeMutableBytes { m in server.handle(UnsafeRawBufferPointer(m)) { out.bytes = $0 } }
        return out.bytes
    }

    func header(_ opcode: fuse_opcode, nodeid: UInt64, argumentBytes: Int) -> fuse_in_header {
        var h = fuse_in_header()
        h.len = UInt32(MemoryLayout<fuse_in_header>.size + argumentBytes)
        h.opcode = opcode.rawValue
        unique &+= 1
        h.unique = unique
        h.nodeid = nodeid
        return h
    }

    /// Where a chain's header and arguments lie (made once: the benchmark
    /// itself allocates nothing per request, so the count is the daemon's).
    let chainMemory = UnsafeMutableRawBufferPointer.allocate(byteCount: 256, alignment: 64)
    /// The chain's readable buffers, filled in place (two without a tail, three with).
    var twoSegments = [UnsafeRawBufferPointer](repeating: UnsafeRawBufferPointer(start: nil, count: 0), count: 2)
    var threeSegments = [UnsafeRawBufferPointer](repeating: UnsafeRawBufferPointer(start: nil, count: 0), count: 3)
    /// What the last chain came to (setup checks that every request succeeds).
    var lastOutcome = FUSEOutcome.noReply

    /// A request as a descriptor chain brings it: header, arguments (and data) in separate buffers.
    @inline(__always)
    func chain<Arguments>(_ opcode: fuse_opcode, nodeid: UInt64, _ arguments: Arguments, tail: UnsafeRawBufferPointer? = nil,
                          group: FUSEFsyncGroup? = nil) {
        let size = MemoryLayout<Arguments>.size, headerSize = MemoryLayout<fuse_in_header>.size
        precondition(size <= chainMemory.count - 64)
        chainMemory.storeBytes(of: header(opcode, nodeid: nodeid, argumentBytes: size + (tail?.count ?? 0)), as: fuse_in_header.self)
        if size > 0 { withUnsafeBytes(of: arguments) { chainMemory.baseAddress!.advanced(by: 64).copyMemory(from: $0.baseAddress!, byteCount: size) } }
        let hb = UnsafeRawBufferPointer(start: chainMemory.baseAddress, count: headerSize)
        let ab = UnsafeRawBufferPointer(start: chainMemory.baseAddress! + 64, count: size)
        var writer = ReplyWriter(reply)
        if let tail {
            threeSegments[0] = hb; threeSegments[1] = ab; threeSegments[2] = tail
            var request = RequestCursor(threeSegments)
            lastOutcome = server.handle(&request, &writer, later: { blackHole($0) }, group: group)
        } else {
            twoSegments[0] = hb; twoSegments[1] = ab
            var request = RequestCursor(twoSegments)
            lastOutcome = server.handle(&request, &writer, later: { blackHole($0) }, group: group)
        }
        blackHole(lastOutcome)
    }

    /// The error in the last reply (0: success); nil when none came.
    var lastError: Int32? {
        guard case .replied = lastOutcome else { return nil }
        return reply.loadUnaligned(fromByteOffset: MemoryLayout<fuse_out_header>.offset(of: \.error)!, as: Int32.self)
    }

    /// Runs each benchmarked request once and stops if one fails: a figure
    /// for an error path would say nothing.
    func checkRequests() {
        getattr(); precondition(lastError == 0, "GETATTR failed: \(String(describing: lastError))")
        chain(FUSE_LOOKUP, nodeid: 1, (), tail: UnsafeRawBufferPointer(name))
        precondition(lastError == 0, "LOOKUP failed: \(String(describing: lastError))")
        var f = fuse_forget_in()
        f.nlookup = 1
        chain(FUSE_FORGET, nodeid: node, f); precondition(lastOutcome == .noReply)
        read(offset: 0); precondition(lastError == 0, "READ failed: \(String(describing: lastError))")
        write(offset: 0); precondition(lastError == 0, "WRITE failed: \(String(describing: lastError))")
        fsync(); precondition(lastError == 0, "FSYNC failed: \(String(describing: lastError))")
        groupedFsync(); precondition(lastOutcome == .deferred && fsyncGroup.isEmpty, "grouped FSYNC not committed")
    }

    func getattr() { chain(FUSE_GETATTR, nodeid: node, fuse_getattr_in()) }
    /// LOOKUP of "f" in the root (the name in its own buffer), then the FORGET it owes.
    func lookup() {
        chain(FUSE_LOOKUP, nodeid: 1, (), tail: UnsafeRawBufferPointer(name))
        var f = fuse_forget_in()
        f.nlookup = 1
        chain(FUSE_FORGET, nodeid: node, f)
    }
    func read(offset: UInt64) {
        var r = fuse_read_in()
        r.fh = handle; r.offset = offset; r.size = 4096
        chain(FUSE_READ, nodeid: node, r)
    }
    func write(offset: UInt64) {
        var w = fuse_write_in()
        w.fh = handle; w.offset = offset; w.size = 4096
        chain(FUSE_WRITE, nodeid: node, w, tail: UnsafeRawBufferPointer(data))
    }
    func fsync() {
        var f = fuse_fsync_in()
        f.fh = handle
        chain(FUSE_FSYNC, nodeid: node, f)
    }
    /// The queue's FSYNC group, reused as the vhost-user back end reuses each queue's.
    let fsyncGroup = FUSEFsyncGroup()
    /// FSYNC as the vhost-user back end serves it: put in the queue's group,
    /// committed at the end of the pass, the reply through the request's sink.
    func groupedFsync() {
        var f = fuse_fsync_in()
        f.fh = handle
        chain(FUSE_FSYNC, nodeid: node, f, group: fsyncGroup)
        server.commit(fsyncGroup)
    }
}

let benchmarks: @Sendable () -> Void = {
    let configuration = Benchmark.Configuration(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        timeUnits: .nanoseconds,
        warmupIterations: 100,
        maxDuration: .seconds(2),
        maxIterations: 20_000,
        skip: getenv("PMEM_IS_PMEM_FORCE").map { String(cString: $0) } != "1")
    for served in [Served(metrics: false), Served(metrics: true)] {
        let suffix = served.registry == nil ? "" : " (metrics on)"
        func bench(_ name: String, _ body: @escaping (Int) -> Void) {
            var i = 0
            Benchmark(name + suffix, configuration: configuration) { _ in
                i &+= 1
                body(i)
            } setup: {
                if served.server == nil { try served.open() }
            } teardown: {
                served.close()
            }
        }
        bench("GETATTR") { _ in served.getattr() }
        bench("LOOKUP + FORGET") { _ in served.lookup() }
        bench("READ 4 KiB (cached)") { i in served.read(offset: UInt64(i & 15) * 4096) }
        bench("WRITE 4 KiB") { i in served.write(offset: UInt64(i & 15) * 4096) }
        bench("WRITE 4 KiB + FSYNC") { i in
            served.write(offset: UInt64(i & 15) * 4096)
            served.fsync()
        }
        bench("WRITE 4 KiB + FSYNC (grouped)") { i in
            served.write(offset: UInt64(i & 15) * 4096)
            served.groupedFsync()
        }
    }
}
