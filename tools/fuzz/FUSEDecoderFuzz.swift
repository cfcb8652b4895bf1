// libFuzzer target: the FUSE engine (FUSEServer.handle: decode, dispatch,
// encode) in front of the real pmfs operations (PMFSOperations over a
// MetadataStore pool and a FileDataTier on /dev/shm). Built and run by
// tools/fuzz/run.sh; see tools/fuzz/README.md.
//
// One input is one FUSE session: the harness sends a valid INIT, then the
// input's messages, split at the 4-byte separator FE ED FA CE (at most 64).
// In each message, before it is sent:
//   - a header len of 0 is replaced by the message's length (other values are
//     sent as they are, to exercise the length check);
//   - any 8-aligned 64-bit word F0F0F0F0F0F0F0kk becomes the k-th node ID an
//     entry reply of this input named (1, the root, before any), and
//     F1F1F1F1F1F1F1kk the k-th file handle an open reply gave: so inputs can
//     act on what they created whatever inode numbers the pool hands out.
// A message whose header padding is not 0 goes in as a guest's descriptor
// chain would bring it: in pieces, with reply memory (see `scattered`).
// Every reply is checked as the kernel would: length matches, error 0 or a
// negated errno above -512 with no payload, unique of a request sent, READ /
// READDIR / GETXATTR / LISTXATTR payloads within the size asked for.
// After each input the session ends and the root is emptied again; every
// 2000 inputs the file system is shut down, the pool checked with the fsck
// passes (any problem aborts, the inputs since the last check are saved for
// replay) and opened again.
import CFUSE
import FUSEProtocol
import Glibc
import Logging
import PMFSCheck
import PMFSCore
import PMFSData
import PMFSMetadata
import PMFSServer

private let separator: [UInt8] = [0xFE, 0xED, 0xFA, 0xCE]
private let nodeMarker: UInt64 = 0xF0F0_F0F0_F0F0_F000
private let handleMarker: UInt64 = 0xF1F1_F1F1_F1F1_F100
private let headerSize = MemoryLayout<fuse_in_header>.size
private let maxMessages = 64
private let checkEvery = Int(getenv("PMFS_FUZZ_CHECK_EVERY").flatMap { Int(String(cString: $0)) } ?? 2000)
/// PMFS_FUZZ_TRACE=1: one line per request and per reply on stderr (for reading a reproducer).
private let trace = getenv("PMFS_FUZZ_TRACE") != nil

private func traceLine(_ s: String) {
    guard trace else { return }
    (s + "\n").utf8CString.withUnsafeBufferPointer { _ = write(2, $0.baseAddress, $0.count - 1) }
}

// MARK: the file system under test

/// A pool and data file on /dev/shm, served by a FileDataTier; shut down, checked
/// and reopened every `checkEvery` inputs.
final class Backing {
    let poolPath: String
    let dataPath: String
    var metadata: MetadataStore
    var device: DataDevice
    var fs: FileDataTier
    var inputsSinceCheck: [[UInt8]] = []
    static let options: FileDataTier.Options = {
        var o = FileDataTier.Options()
        o.cacheBytes = 4 << 20
        return o
    }()

    init() throws {
        setenv("PMEM_IS_PMEM_FORCE", "1", 1)
        setenv("PMEMOBJ_CONF", "sds.at_create=0", 1)
        Self.removeStaleFiles()
        poolPath = "/dev/shm/pmfs-fuzz-\(getpid()).pool"
        dataPath = "/dev/shm/pmfs-fuzz-\(getpid()).data"
        unlink(poolPath)
        // 4 MiB: a COPY_FILE_RANGE of a sparse gigabyte meets ENOSPC soon
        // (with 16 MiB such inputs took 80% of the time).
        let dataBlocks: UInt64 = 1024
        let fd = open(dataPath, O_CREAT | O_RDWR | O_TRUNC, 0o600)
        precondition(fd >= 0, "cannot create \(dataPath)")
        ftruncate(fd, off_t(dataBlocks * 4096))
        close(fd)
        var fo = MetadataStore.FormatOptions(poolSize: 32 << 20, dataBlocks: dataBlocks)
        fo.label = "fuzz"
        metadata = try MetadataStore.format(poolPath: poolPath, options: fo)
        try DataDeviceHeader(blockSize: 4096, blockCount: dataBlocks, fsUUID: metadata.uuid, dataUUID: metadata.dataUUID).write(to: dataPath)
        device = try DataDevice(path: dataPath)
        fs = try FileDataTier(metadata: metadata, device: device, options: Self.options)
        atexit { if let b = backing { unlink(b.poolPath); unlink(b.dataPath) } }
    }

    /// Pools and data files of fuzzer processes that are gone (a crash or a
    /// timeout ends the process without cleaning up).
    static func removeStaleFiles() {
        guard let dir = opendir("/dev/shm") else { return }
        defer { closedir(dir) }
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.baseAddress!.assumingMemoryBound(to: CChar.self)) }
            guard name.hasPrefix("pmfs-fuzz-"), let dot = name.lastIndex(of: "."),
                  let pid = Int32(name[name.index(name.startIndex, offsetBy: 10)..<dot]) else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { unlink("/dev/shm/\(name)") }
        }
    }

    /// Empties the root again: whatever an input created goes (depth-first).
    func clearRoot() {
        func clear(_ dir: UInt64, depth: Int) {
            precondition(depth < 512, "directory tree deeper than 512 under the root: a loop?")
            var entries: [DirectoryEntry] = []
            var cookie: UInt64 = 0
            while true {
                let batch: [DirectoryEntry]
                do { batch = try metadata.readdir(dir, cookie: cookie, limit: 256) } catch {
                    preconditionFailure("readdir \(dir) while clearing: \(error)")
                }
                guard let last = batch.last else { break }
                precondition(last.nextCookie > cookie, "readdir cookie did not advance")
                cookie = last.nextCookie
                entries += batch.filter { $0.name != [0x2E] && $0.name != [0x2E, 0x2E] }
            }
            for e in entries {
                do {
                    let name = try FileName(bytes: e.name)
                    if e.type == .directory {
                        clear(e.ino, depth: depth + 1)
                        try metadata.rmdir(dir, name)
                    } else {
                        try metadata.unlink(dir, name)
                    }
                } catch {
                    preconditionFailure("removing \(e.name) (inode \(e.ino)) from \(dir) while clearing: \(error)")
                }
            }
        }
        clear(1, depth: 0)
        do {
            for name in try metadata.listxattr(1) { try metadata.removexattr(1, name) }
            _ = try metadata.setattr(1, AttributeChanges(mode: 0o755, uid: 0, gid: 0))
        } catch {
            preconditionFailure("resetting the root: \(error)")
        }
    }

    /// A clean stop, the fsck passes over the pool, and a start again.
    func checkAndReopen(artifactDirectory: String) {
        do {
            try fs.shutdown()
            device.close()
            try metadata.close()
        } catch {
            saveInputs(artifactDirectory, reason: "clean shutdown failed: \(error)")
        }
        do {
            let report = try FileSystemChecker(poolPath: poolPath).run(CheckOptions())
            if !report.problems.isEmpty {
                let list = report.problems.map { "  \($0.code): \($0.message)" }.joined(separator: "\n")
                saveInputs(artifactDirectory, reason: "the pool check found problems:\n\(list)")
            }
        } catch {
            saveInputs(artifactDirectory, reason: "the pool check could not run: \(error)")
        }
        do {
            metadata = try MetadataStore.open(poolPath: poolPath, dataDevice: try DataDeviceHeader.read(from: dataPath))
            device = try DataDevice(path: dataPath)
            fs = try FileDataTier(metadata: metadata, device: device, options: Self.options)
        } catch {
            saveInputs(artifactDirectory, reason: "reopening the pool failed: \(error)")
        }
        inputsSinceCheck.removeAll(keepingCapacity: true)
    }

    /// A failure that no single input shows: saves every input since the last
    /// check (replay them in order: `fuzz-fuse DIR/*`), then aborts.
    func saveInputs(_ directory: String, reason: String) -> Never {
        let dir = "\(directory)pool-check-\(getpid())"
        mkdir(dir, 0o755)
        for (i, input) in inputsSinceCheck.enumerated() {
            let number = String(i)
            let f = fopen("\(dir)/\(String(repeating: "0", count: max(0, 6 - number.count)))\(number)", "w")!
            input.withUnsafeBytes { _ = fwrite($0.baseAddress, 1, $0.count, f) }
            fclose(f)
        }
        let text = "fuzz-fuse: \(reason)\nfuzz-fuse: the \(inputsSinceCheck.count) inputs since the last check are in \(dir)/\n"
        text.utf8CString.withUnsafeBufferPointer { _ = write(2, $0.baseAddress, $0.count - 1) }
        abort()
    }
}

nonisolated(unsafe) var backing: Backing?
nonisolated(unsafe) var artifactPrefix = "./"

// MARK: one session

/// What an input's requests asked for and what the replies named.
final class Session: @unchecked Sendable {
    var nodes: [UInt64] = []
    var handles: [UInt64] = []
    var opcodes: [UInt64: UInt32] = [:]
    /// Largest payload a reply may carry (READ, READDIR, xattr queries).
    var limits: [UInt64: Int] = [:]
    /// Requests not answered yet (or never: FORGET), and uniques sent again
    /// while still outstanding: replies to those are checked only in general.
    var outstanding: Set<UInt64> = []
    var ambiguous: Set<UInt64> = []
    /// Bytes of reply memory given with a scattered request (see `scattered`).
    var replyMemory: [UInt64: Int] = [:]

    func check(_ reply: [UInt8]) {
        precondition(reply.count >= MemoryLayout<fuse_out_header>.size, "reply shorter than its header")
        let h = reply.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }
        traceLine("  reply unique \(h.unique): error \(h.error), len \(h.len), \(reply.count - 16) bytes"
                  + (reply.count >= 24 ? ", first word \(reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: UInt64.self) })" : ""))
        precondition(h.error <= 0 && h.error > -512, "reply error \(h.error) out of the kernel's range")
        guard let opcode = opcodes[h.unique] else { preconditionFailure("reply to unique \(h.unique), never sent") }
        var payload = reply.count - 16
        if ambiguous.contains(h.unique) && reply.count == 16 {
            // Maybe a READ into reply memory, maybe not: which request it answers is unknown.
        } else if let capacity = replyMemory[h.unique], opcode == FUSE_READ.rawValue, h.error == 0, reply.count == 16 {
            // A READ put its data into the reply memory: len counts it, the reply is the out-header.
            precondition(Int(h.len) >= 16 && Int(h.len) <= capacity, "in-place READ reply len \(h.len) for \(capacity) bytes of reply memory")
            payload = Int(h.len) - 16
        } else {
            precondition(Int(h.len) == reply.count, "reply len \(h.len) but \(reply.count) bytes")
        }
        precondition(h.error == 0 || reply.count == 16, "error reply with a payload")
        outstanding.remove(h.unique)
        if ambiguous.contains(h.unique) { return }
        if let limit = limits[h.unique] { precondition(payload <= limit, "opcode \(opcode): \(payload) bytes for \(limit) asked") }
        guard h.error == 0 else { return }
        reply.withUnsafeBytes { r in
            switch fuse_opcode(rawValue: opcode) {
            case FUSE_LOOKUP, FUSE_MKDIR, FUSE_MKNOD, FUSE_SYMLINK, FUSE_LINK:
                precondition(payload == MemoryLayout<fuse_entry_out>.size, "entry reply of \(payload) bytes")
                nodes.append(r.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
            case FUSE_CREATE, FUSE_TMPFILE:
                precondition(payload == MemoryLayout<fuse_entry_out>.size + MemoryLayout<fuse_open_out>.size, "create reply of \(payload) bytes")
                nodes.append(r.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
                handles.append(r.loadUnaligned(fromByteOffset: 16 + MemoryLayout<fuse_entry_out>.size, as: UInt64.self))
            case FUSE_OPEN, FUSE_OPENDIR:
                precondition(payload == MemoryLayout<fuse_open_out>.size, "open reply of \(payload) bytes")
                handles.append(r.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
            default:
                break
            }
        }
    }

    /// Replaces node and handle markers (see the top of the file).
    func resolveMarkers(_ m: UnsafeMutableRawBufferPointer) {
        var o = 0
        while o + 8 <= m.count {
            let v = m.loadUnaligned(fromByteOffset: o, as: UInt64.self)
            if v & ~0xFF == nodeMarker {
                m.storeBytes(of: nodes.isEmpty ? 1 : nodes[Int(v & 0xFF) % nodes.count], toByteOffset: o, as: UInt64.self)
            } else if v & ~0xFF == handleMarker {
                m.storeBytes(of: handles.isEmpty ? 0 : handles[Int(v & 0xFF) % handles.count], toByteOffset: o, as: UInt64.self)
            }
            o += 8
        }
    }

    /// Notes what a request is, for checking its replies.
    func note(_ m: UnsafeRawBufferPointer) {
        guard m.count >= headerSize else { return }
        let h = m.loadUnaligned(as: fuse_in_header.self)
        traceLine("request unique \(h.unique): opcode \(h.opcode), node \(h.nodeid), len \(h.len), \(m.count) bytes")
        if !outstanding.insert(h.unique).inserted { ambiguous.insert(h.unique) }
        opcodes[h.unique] = h.opcode
        replyMemory[h.unique] = nil
        let body = UnsafeRawBufferPointer(rebasing: m[headerSize...])
        switch fuse_opcode(rawValue: h.opcode) {
        case FUSE_READ, FUSE_READDIR, FUSE_READDIRPLUS:
            if body.count >= MemoryLayout<fuse_read_in>.size {
                limits[h.unique] = Int(body.loadUnaligned(as: fuse_read_in.self).size)
            }
        case FUSE_GETXATTR, FUSE_LISTXATTR:
            if body.count >= 4 {
                let size = Int(body.loadUnaligned(as: UInt32.self))
                limits[h.unique] = size == 0 ? MemoryLayout<fuse_getxattr_out>.size : size
            }
        default:
            limits[h.unique] = nil
        }
    }
}

private func initMessage() -> [UInt8] {
    var i = fuse_init_in()
    i.major = 7
    i.minor = 38
    i.max_readahead = 1 << 17
    i.flags = 0xFFFF_FFFF
    i.flags2 = 0xFFFF_FFFF
    return Seed.message(FUSE_INIT, unique: 1, node: 0, Seed.bytes(i))
}
private let initRequest = initMessage()

/// The input cut at each separator.
private func split(_ input: UnsafeRawBufferPointer) -> [UnsafeRawBufferPointer] {
    var parts: [UnsafeRawBufferPointer] = []
    var start = 0
    var i = 0
    while i + separator.count <= input.count && parts.count < maxMessages - 1 {
        if input[i] == separator[0] && input[i + 1] == separator[1] && input[i + 2] == separator[2] && input[i + 3] == separator[3] {
            parts.append(UnsafeRawBufferPointer(rebasing: input[start..<i]))
            i += separator.count
            start = i
        } else {
            i += 1
        }
    }
    parts.append(UnsafeRawBufferPointer(rebasing: input[start...]))
    return parts
}

/// A request as a guest's descriptor chain brings it: in pieces, with reply
/// memory (FUSEServer.handle over a RequestCursor and a ReplyWriter). The header's padding
/// field, which the server ignores, says how: low byte, the first piece's
/// length (0: none); bits 8-14, the later pieces' length in 16-byte units (0:
/// the rest in one); bit 15, half the reply memory a READ needs. Reply memory
/// is the out-header's room (plus bits 8-14 bytes), then 4 KiB buffers. Every
/// piece is its own allocation of exactly its size, so ASan sees any access
/// past one; what a READ put into the reply memory is read back in full.
private func scattered(_ m: UnsafeRawBufferPointer, layout: UInt16, server: FUSEServer, session: Session, sink: @escaping FUSEReplySink) {
    func piece(_ bytes: UnsafeRawBufferPointer) -> UnsafeMutableRawBufferPointer {
        let p = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
        p.copyMemory(from: bytes)
        return p
    }
    var pieces: [UnsafeMutableRawBufferPointer] = []
    var position = 0
    let first = Int(layout & 0xFF), step = Int((layout >> 8) & 0x7F) * 16
    if first > 0 {
        pieces.append(piece(UnsafeRawBufferPointer(rebasing: m[0..<min(first, m.count)])))
        position = pieces[0].count
    }
    while position < m.count {
        let n = step > 0 ? min(step, m.count - position) : m.count - position
        pieces.append(piece(UnsafeRawBufferPointer(rebasing: m[position..<(position + n)])))
        position += n
    }
    let h = m.loadUnaligned(as: fuse_in_header.self)
    var capacity = 4096
    if h.opcode == FUSE_READ.rawValue && m.count >= headerSize + MemoryLayout<fuse_read_in>.size {
        capacity = 16 + Int(min(m.loadUnaligned(fromByteOffset: headerSize, as: fuse_read_in.self).size, 1 << 20))
    }
    if layout & 0x8000 != 0 { capacity /= 2 }
    var memory: [UnsafeMutableRawBufferPointer] = []
    var left = capacity
    while left > 0 {
        let n = memory.isEmpty ? min(left, 16 + Int((layout >> 8) & 0x7F)) : min(left, 4096)
        let p = UnsafeMutableRawBufferPointer.allocate(byteCount: n, alignment: 8)
        p.initializeMemory(as: UInt8.self, repeating: 0xA5)
        memory.append(p)
        left -= n
    }
    session.replyMemory[h.unique] = capacity
    var request = RequestCursor(pieces.map { UnsafeRawBufferPointer($0) })
    var reply = ReplyWriter(memory)
    if case .replied = server.handle(&request, &reply, later: sink) { sink(reply.bytes) }
    var sum: UInt8 = 0
    for p in memory { for byte in p { sum &+= byte }; p.deallocate() }
    for p in pieces { p.deallocate() }
    if sum == 0x5A && trace { traceLine("  (reply memory checksum 0x5A)") }   // keeps the reads
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuseDecoderFuzz(_ bytes: UnsafeRawPointer, _ count: Int) -> CInt {
    let b = backing!
    let input = UnsafeRawBufferPointer(start: bytes, count: count)
    b.inputsSinceCheck.append(Array(input))

    let session = Session()
    let operations = PMFSOperations(metadata: b.metadata, fs: b.fs)
    let server = FUSEServer(operations: operations)
    let sink: FUSEReplySink = { session.check($0) }
    initRequest.withUnsafeBytes { session.note($0); server.handle($0, reply: sink) }
    precondition(server.initialized, "the harness's INIT was refused")

    for part in split(input) {
        var message = Array(part)
        message.withUnsafeMutableBytes { m in
            session.resolveMarkers(m)
            if m.count >= headerSize && m.loadUnaligned(as: UInt32.self) == 0 { m.storeBytes(of: UInt32(m.count), as: UInt32.self) }
        }
        message.withUnsafeBytes { m in
            session.note(m)
            let layout = m.count >= headerSize ? m.loadUnaligned(fromByteOffset: 38, as: UInt16.self) : 0
            if layout == 0 {
                server.handle(m, reply: sink)
            } else {
                scattered(m, layout: layout, server: server, session: session, sink: sink)
            }
        }
    }
    operations.endSession()
    b.clearRoot()
    if b.inputsSinceCheck.count >= checkEvery { b.checkAndReopen(artifactDirectory: artifactPrefix) }
    return 0
}

// MARK: setup and seeds

/// libpmemobj keeps pointers to its runtime state inside the mapped pool, which
/// LeakSanitizer does not scan: its allocations look leaked while a pool is open.
@_cdecl("__lsan_default_suppressions")
public func leakSuppressions() -> UnsafePointer<CChar> {
    UnsafeRawPointer(StaticString("leak:libpmemobj.so\n").utf8Start).assumingMemoryBound(to: CChar.self)
}

@_cdecl("LLVMFuzzerInitialize")
public func fuseDecoderFuzzInitialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>) -> CInt {
    for i in 1..<Int(argc.pointee) {
        let arg = String(cString: argv.pointee[i]!)
        if arg.hasPrefix("-artifact_prefix=") { artifactPrefix = String(arg.dropFirst("-artifact_prefix=".count)) }
    }
    if let level = getenv("PMFS_FUZZ_LOG").flatMap({ Logger.Level(rawValue: String(cString: $0)) }) {
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
    } else {
        LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
    }
    if let dir = getenv("PMFS_FUZZ_WRITE_SEEDS").map({ String(cString: $0) }) {
        Seed.writeAll(to: dir)
    }
    do { backing = try Backing() } catch { fatalError("fuzz-fuse: cannot set up the file system: \(error)") }
    return 0
}

/// The seed corpus: short sessions that use every opcode the engine decodes.
enum Seed {
    static func bytes<T>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }
    static func name(_ s: String) -> [UInt8] { Array(s.utf8) + [0] }
    static func node(_ k: UInt64) -> UInt64 { nodeMarker | k }
    static func handle(_ k: UInt64) -> UInt64 { handleMarker | k }

    static func message(_ opcode: fuse_opcode, unique: UInt64, node: UInt64, _ body: [UInt8]) -> [UInt8] {
        var h = fuse_in_header()
        h.len = 0   // filled in by the harness
        h.opcode = opcode.rawValue
        h.unique = unique
        h.nodeid = node
        h.uid = 1000
        h.gid = 1000
        h.pid = 42
        if opcode == FUSE_INIT { h.len = UInt32(headerSize + body.count) }
        return bytes(h) + body
    }

    /// One session: messages joined with the separator.
    struct Script {
        var messages: [[UInt8]] = []
        var unique: UInt64 = 2
        mutating func add(_ opcode: fuse_opcode, _ node: UInt64 = 1, _ body: [UInt8] = []) {
            messages.append(Seed.message(opcode, unique: unique, node: node, body))
            unique += 1
        }
        var data: [UInt8] { Array(messages.joined(separator: separator)) }
    }

    static func create(_ s: inout Script, _ n: String, mode: UInt32 = 0o100644, flags: UInt32 = UInt32(O_RDWR)) {
        var c = fuse_create_in()
        c.flags = flags; c.mode = mode; c.umask = 0o022
        s.add(FUSE_CREATE, 1, bytes(c) + name(n))
    }

    static func write(_ s: inout Script, node: UInt64, handle: UInt64, offset: UInt64, _ data: [UInt8]) {
        var w = fuse_write_in()
        w.fh = handle; w.offset = offset; w.size = UInt32(data.count)
        s.add(FUSE_WRITE, node, bytes(w) + data)
    }

    static func read(_ s: inout Script, _ opcode: fuse_opcode = FUSE_READ, node: UInt64, handle: UInt64, offset: UInt64, size: UInt32) {
        var r = fuse_read_in()
        r.fh = handle; r.offset = offset; r.size = size
        s.add(opcode, node, bytes(r))
    }

    static func lock(_ s: inout Script, _ opcode: fuse_opcode, node: UInt64, owner: UInt64, type: Int32, start: UInt64, end: UInt64, flock: Bool = false) {
        var l = fuse_lk_in()
        l.fh = handle(0); l.owner = owner
        l.lk = fuse_file_lock(start: start, end: end, type: UInt32(type), pid: 42)
        l.lk_flags = flock ? UInt32(FUSE_LK_FLOCK) : 0
        s.add(opcode, node, bytes(l))
    }

    static var all: [[UInt8]] {
        var seeds: [Script] = []

        // Files: create, write, read, attributes, sync, close.
        var s = Script()
        create(&s, "file")
        write(&s, node: node(0), handle: handle(0), offset: 0, Array("hello, pmfs".utf8))
        write(&s, node: node(0), handle: handle(0), offset: 9000, [UInt8](repeating: 0x61, count: 300))
        read(&s, node: node(0), handle: handle(0), offset: 0, size: 4096)
        read(&s, node: node(0), handle: handle(0), offset: 8000, size: 65536)
        var g = fuse_getattr_in(); g.getattr_flags = UInt32(FUSE_GETATTR_FH); g.fh = handle(0)
        s.add(FUSE_GETATTR, node(0), bytes(g))
        var sa = fuse_setattr_in(); sa.valid = UInt32(FATTR_SIZE | FATTR_MODE | FATTR_MTIME_NOW | FATTR_ATIME); sa.size = 5; sa.mode = 0o4755; sa.atime = 1000
        s.add(FUSE_SETATTR, node(0), bytes(sa))
        var f = fuse_fsync_in(); f.fh = handle(0); f.fsync_flags = 1
        s.add(FUSE_FSYNC, node(0), bytes(f))
        var fl = fuse_flush_in(); fl.fh = handle(0); fl.lock_owner = 7
        s.add(FUSE_FLUSH, node(0), bytes(fl))
        var rl = fuse_release_in(); rl.fh = handle(0); rl.lock_owner = 7
        s.add(FUSE_RELEASE, node(0), bytes(rl))
        s.add(FUSE_LOOKUP, 1, name("file"))
        var fo = fuse_forget_in(); fo.nlookup = 1
        s.add(FUSE_FORGET, node(1), bytes(fo))
        seeds.append(s)

        // The same as a guest sends it: in pieces, with reply memory (one READ's too small).
        var pieces = s
        for i in pieces.messages.indices {
            let isRead = pieces.messages[i].withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) } == FUSE_READ.rawValue
            let layout: UInt16 = isRead && i % 2 == 0 ? 0x8000 | 0x0240 : 0x0305
            pieces.messages[i].withUnsafeMutableBytes { $0.storeBytes(of: layout, toByteOffset: 38, as: UInt16.self) }
        }
        seeds.append(pieces)

        // Names: directories, links, symlinks, rename, unlink, rmdir, mknod.
        s = Script()
        var md = fuse_mkdir_in(); md.mode = 0o2755; md.umask = 0o022
        s.add(FUSE_MKDIR, 1, bytes(md) + name("dir"))
        create(&s, "a")
        var li = fuse_link_in(); li.oldnodeid = node(1)
        s.add(FUSE_LINK, node(0), bytes(li) + name("b"))
        s.add(FUSE_SYMLINK, node(0), name("s") + name("../a"))
        s.add(FUSE_READLINK, node(3))
        var mk = fuse_mknod_in(); mk.mode = 0o010644
        s.add(FUSE_MKNOD, 1, bytes(mk) + name("fifo"))
        var rn = fuse_rename2_in(); rn.newdir = node(0); rn.flags = 1
        s.add(FUSE_RENAME2, 1, bytes(rn) + name("a") + name("c"))
        var rx = fuse_rename2_in(); rx.newdir = 1; rx.flags = 2
        s.add(FUSE_RENAME2, node(0), bytes(rx) + name("b") + name("fifo"))
        s.add(FUSE_RENAME, node(0), bytes(UInt64(1)) + name("c") + name("d"))
        s.add(FUSE_UNLINK, 1, name("d"))
        s.add(FUSE_UNLINK, node(0), name("s"))
        s.add(FUSE_RMDIR, 1, name("dir"))
        var bf = fuse_batch_forget_in(); bf.count = 2
        s.add(FUSE_BATCH_FORGET, 0, bytes(bf) + bytes(node(1)) + bytes(UInt64(1)) + bytes(node(2)) + bytes(UInt64(1)))
        seeds.append(s)

        // Directories: opendir, readdir, readdirplus, releasedir, fsyncdir, statfs, access.
        s = Script()
        create(&s, "x")
        s.add(FUSE_MKDIR, 1, bytes(md) + name("y"))
        var od = fuse_open_in(); od.flags = UInt32(O_RDONLY | O_DIRECTORY)
        s.add(FUSE_OPENDIR, 1, bytes(od))
        read(&s, FUSE_READDIR, node: 1, handle: handle(1), offset: 0, size: 4096)
        read(&s, FUSE_READDIRPLUS, node: 1, handle: handle(1), offset: 0, size: 4096)
        read(&s, FUSE_READDIRPLUS, node: 1, handle: handle(1), offset: 2, size: 200)
        var fd = fuse_fsync_in(); fd.fh = handle(1)
        s.add(FUSE_FSYNCDIR, 1, bytes(fd))
        var rd = fuse_release_in(); rd.fh = handle(1)
        s.add(FUSE_RELEASEDIR, 1, bytes(rd))
        s.add(FUSE_STATFS, 1)
        var ac = fuse_access_in(); ac.mask = 7
        s.add(FUSE_ACCESS, node(0), bytes(ac))
        seeds.append(s)

        // Extended attributes (SETXATTR_EXT is negotiated: the 16-byte argument).
        s = Script()
        create(&s, "xa")
        var sx = fuse_setxattr_in(); sx.size = 5
        s.add(FUSE_SETXATTR, node(0), bytes(sx) + name("user.one") + Array("value".utf8))
        sx.flags = 1; sx.size = 0
        s.add(FUSE_SETXATTR, node(0), bytes(sx) + name("user.two"))
        var gx = fuse_getxattr_in(); gx.size = 0
        s.add(FUSE_GETXATTR, node(0), bytes(gx) + name("user.one"))
        gx.size = 64
        s.add(FUSE_GETXATTR, node(0), bytes(gx) + name("user.one"))
        gx.size = 2
        s.add(FUSE_LISTXATTR, node(0), bytes(gx))
        gx.size = 0
        s.add(FUSE_LISTXATTR, node(0), bytes(gx))
        s.add(FUSE_REMOVEXATTR, node(0), name("user.one"))
        seeds.append(s)

        // Locks: POSIX ranges, flock, a waiter woken by an unlock, an interrupt.
        s = Script()
        create(&s, "locked")
        lock(&s, FUSE_SETLK, node: node(0), owner: 1, type: F_WRLCK, start: 0, end: 99)
        lock(&s, FUSE_GETLK, node: node(0), owner: 2, type: F_RDLCK, start: 50, end: UInt64.max)
        lock(&s, FUSE_SETLKW, node: node(0), owner: 2, type: F_WRLCK, start: 10, end: 20)
        lock(&s, FUSE_SETLK, node: node(0), owner: 1, type: F_UNLCK, start: 0, end: UInt64.max)
        lock(&s, FUSE_SETLK, node: node(0), owner: 3, type: F_WRLCK, start: 0, end: UInt64.max, flock: true)
        lock(&s, FUSE_SETLKW, node: node(0), owner: 4, type: F_RDLCK, start: 0, end: UInt64.max, flock: true)
        var ir = fuse_interrupt_in(); ir.unique = s.unique - 1
        s.add(FUSE_INTERRUPT, 0, bytes(ir))
        seeds.append(s)

        // Data: fallocate, lseek, copy_file_range, tmpfile, open with O_TRUNC, syncfs.
        s = Script()
        create(&s, "src")
        write(&s, node: node(0), handle: handle(0), offset: 4096, [UInt8](repeating: 0x62, count: 5000))
        var fa = fuse_fallocate_in(); fa.fh = handle(0); fa.offset = 65536; fa.length = 8192
        s.add(FUSE_FALLOCATE, node(0), bytes(fa))
        fa.offset = 4096; fa.length = 4096; fa.mode = 3   // punch hole, keep size
        s.add(FUSE_FALLOCATE, node(0), bytes(fa))
        var ls = fuse_lseek_in(); ls.fh = handle(0); ls.offset = 0; ls.whence = 3
        s.add(FUSE_LSEEK, node(0), bytes(ls))
        ls.whence = 4
        s.add(FUSE_LSEEK, node(0), bytes(ls))
        var tf = fuse_create_in(); tf.flags = UInt32(O_RDWR); tf.mode = 0o100600
        s.add(FUSE_TMPFILE, 1, bytes(tf))
        var cf = fuse_copy_file_range_in(); cf.fh_in = handle(0); cf.off_in = 4096; cf.nodeid_out = node(1); cf.fh_out = handle(1); cf.len = 10000
        s.add(FUSE_COPY_FILE_RANGE, node(0), bytes(cf))
        var op = fuse_open_in(); op.flags = UInt32(O_RDWR | O_TRUNC); op.open_flags = UInt32(FUSE_OPEN_KILL_SUIDGID)
        s.add(FUSE_OPEN, node(0), bytes(op))
        s.add(FUSE_SYNCFS, 1, [0, 0, 0, 0, 0, 0, 0, 0])
        s.add(FUSE_DESTROY, 1)
        seeds.append(s)

        // Odd messages: a short header, a wrong length, extensions, unknown opcodes.
        s = Script()
        s.messages.append(Array(message(FUSE_GETATTR, unique: 90, node: 1, []).prefix(20)))
        var wrong = message(FUSE_GETATTR, unique: 91, node: 1, bytes(fuse_getattr_in()))
        wrong.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(4096), as: UInt32.self) }
        s.messages.append(wrong)
        var ext = message(FUSE_LOOKUP, unique: 92, node: 1, name("e") + [UInt8](repeating: 0, count: 7) + [UInt8](repeating: 0, count: 16))
        ext.withUnsafeMutableBytes { $0.storeBytes(of: UInt16(2), toByteOffset: 36, as: UInt16.self) }
        s.messages.append(ext)
        s.add(FUSE_IOCTL, 1, [UInt8](repeating: 0, count: 32))
        s.messages.append(message(fuse_opcode(rawValue: 4096), unique: 93, node: 1, []))
        var old = fuse_init_in(); old.major = 7; old.minor = 20   // too old: EPROTO
        s.add(FUSE_INIT, 0, bytes(old))
        seeds.append(s)

        return seeds.map(\.data)
    }

    static func writeAll(to dir: String) {
        mkdir(dir, 0o755)
        for (i, seed) in all.enumerated() {
            let path = "\(dir)/seed-\(i)"
            guard let f = fopen(path, "w") else { fatalError("cannot write \(path)") }
            seed.withUnsafeBytes { _ = fwrite($0.baseAddress, 1, $0.count, f) }
            fclose(f)
        }
    }
}
