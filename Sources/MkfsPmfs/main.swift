import ArgumentParser
import Glibc
import PMFSConcurrency
import PMFSMetadata

/// mkfs.pmfs: creates the metadata pool and writes the header of the data device.
///
/// Everything is checked before anything is written, and the pool is made before
/// the data device is touched, so a refused or failed run leaves both as they were
/// (except what --force removed on purpose).
struct MkfsPmfs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mkfs.pmfs",
        abstract: "Create a pmfs file system: a metadata pool and a data device.",
        discussion: """
            The pool is a libpmemobj pool file, normally on persistent memory or, emulated, on \
            /dev/shm. With the pool on /dev/shm, run with PMEM_IS_PMEM_FORCE=1 in the environment so \
            PMDK flushes CPU caches instead of calling msync (mkfs.pmfs sets nothing itself). \
            The data device is a block device or a regular file; with --data-size a missing or \
            smaller file is created or grown and preallocated. \
            Sizes take an optional K, M, G or T suffix (powers of 1024).
            """)

    @Option(help: "Path of the metadata pool file to create.")
    var pool: String

    @Option(help: "Path of the data device: a block device or a regular file.")
    var data: String

    @Option(name: .customLong("pool-size"), help: "Size of the pool (default: 64M + data size / 256).")
    var poolSize: String?

    @Option(name: .customLong("data-size"), help: "Size of the data device; creates or grows a regular file.")
    var dataSize: String?

    @Option(help: "File system label (at most 63 bytes).")
    var label: String = ""

    @Option(help: "File system UUID (default: random).")
    var uuid: String?

    @Flag(name: .shortAndLong, help: "Overwrite an existing pmfs pool or data device, and allow shrinking the data file.")
    var force = false

    @Flag(name: .customLong("zero-data"), help: ArgumentHelp(
        "Write zeros over a data file once, so later writes overwrite written blocks.",
        discussion: "On a host file system, writes into preallocated (unwritten) blocks make every fsync commit the host's journal; written-once blocks avoid that."))
    var zeroData = false

    @Flag(name: .shortAndLong, help: "Print nothing but errors.")
    var quiet = false

    static let blockSize: UInt64 = 4096
    /// MetadataStore.format refuses fewer blocks than this.
    static let minimumBlocks: UInt64 = 16

    func run() throws {
        // 1. Arguments.
        let wantedDataSize = try dataSize.map { try parseSize($0, what: "--data-size") }
        let wantedPoolSize = try poolSize.map { try parseSize($0, what: "--pool-size") }
        var fsUUID = randomUUID()
        if let text = uuid {
            guard let parsed = parseUUID(text) else { fail("bad UUID '\(text)' (expected 32 hex digits, e.g. 0f8e3c2a-...)") }
            fsUUID = parsed
        }
        guard label.utf8.count <= 63 else { fail("label is \(label.utf8.count) bytes long; at most 63 bytes are allowed") }
        guard !label.utf8.contains(0) else { fail("label contains a NUL byte") }
        guard !pool.isEmpty, !data.isEmpty else { fail("empty path") }

        guard !sameFile(pool, data) else { fail("the pool and the data device must be different files (both are \(data))") }

        // 2. The data device, without changing it.
        let device = try examineDataDevice(wantedSize: wantedDataSize)
        let blocks = device.usableBytes / Self.blockSize
        guard blocks >= Self.minimumBlocks else {
            fail("data device \(data) is too small: \(device.usableBytes) bytes; need at least \(Self.minimumBlocks * Self.blockSize) bytes (\(Self.minimumBlocks) blocks of \(Self.blockSize))")
        }

        // 3. The pool path, without changing it.
        let poolExists = try examinePool()

        // 4. Make the pool, then the data device. Undo what this run made on failure.
        let size = wantedPoolSize ?? defaultPoolSize(dataBytes: blocks * Self.blockSize)
        if poolExists {
            guard Glibc.unlink(pool) == 0 else { fail("cannot remove old pool \(pool): \(errnoText())") }
        }
        var options = MetadataStore.FormatOptions(poolSize: size, dataBlocks: blocks)
        options.label = label
        options.uuid = fsUUID
        let store: MetadataStore
        do {
            store = try MetadataStore.format(poolPath: pool, options: options)
        } catch {
            fail(describe(error))
        }
        let undoPool = { try? store.close(); _ = Glibc.unlink(pool) }
        do {
            try prepareDataFile(device, bytes: blocks * Self.blockSize)
            if zeroData { try zeroDataFile(device, bytes: blocks * Self.blockSize) }
        } catch let error as Message {
            undoPool()
            fail(error.text)
        }
        let header = DataDeviceHeader(blockSize: UInt32(Self.blockSize), blockCount: blocks,
                                      fsUUID: store.uuid, dataUUID: store.dataUUID)
        do {
            try header.write(to: data)
            try store.close()
        } catch {
            undoPool()
            if device.kind == .missing { _ = Glibc.unlink(data) }
            fail(describe(error))
        }

        if !quiet {
            let dataBytes = blocks * Self.blockSize
            print("mkfs.pmfs: created a pmfs file system")
            print("  UUID:        \(formatUUID(store.uuid))")
            print("  label:       \(label.isEmpty ? "(none)" : label)")
            print("  data device: \(data): \(blocks) blocks of \(Self.blockSize) bytes (\(human(dataBytes)))\(device.kind == .missing ? ", created" : "")")
            print("  data UUID:   \(formatUUID(store.dataUUID))")
            print("  pool:        \(pool): \(size) bytes (\(human(size)))")
        }
    }

    // MARK: data device

    enum DeviceKind { case missing, regular, block }

    struct DataDevice {
        var kind: DeviceKind
        var currentBytes: UInt64
        var usableBytes: UInt64
    }

    /// What the data path is and how much of it the file system gets. Refuses a
    /// device that already has a pmfs header unless --force.
    func examineDataDevice(wantedSize: UInt64?) throws -> DataDevice {
        var st = stat()
        guard stat(data, &st) == 0 else {
            let e = errno
            guard e == ENOENT else { fail("data device \(data): \(errnoText(e))") }
            try checkParentDirectory(of: data, what: "data device")
            guard let wantedSize else { fail("data device \(data) does not exist (give --data-size to create a file of that size)") }
            return DataDevice(kind: .missing, currentBytes: 0, usableBytes: wantedSize)
        }
        let kind: DeviceKind
        switch st.st_mode & S_IFMT {
        case S_IFREG: kind = .regular
        case S_IFBLK: kind = .block
        case S_IFDIR: fail("data device \(data) is a directory")
        default: fail("data device \(data) is not a regular file or a block device")
        }
        // Writable now, so a refusal later cannot come from permissions.
        let fd = Glibc.open(data, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { fail("cannot open data device \(data) for writing: \(errnoText())") }
        Glibc.close(fd)
        let current: UInt64
        do { current = try DataDeviceHeader.deviceSize(path: data) } catch { fail(describe(error)) }
        do {
            if let old = try DataDeviceHeader.read(from: data), !force {
                fail("data device \(data) already holds a pmfs file system (UUID \(formatUUID(old.fsUUID))); use --force to overwrite it")
            }
        } catch {
            // A pmfs magic with a bad checksum is still someone's header.
            if !force { fail("\(describe(error)); use --force to overwrite it") }
        }
        var usable = current
        if let wantedSize {
            switch kind {
            case .block:
                guard wantedSize <= current else {
                    fail("data device \(data) is too small: \(current) bytes, --data-size asks for \(wantedSize)")
                }
                usable = wantedSize
            case .regular:
                if wantedSize < current && !force {
                    fail("data file \(data) is \(current) bytes, larger than --data-size \(wantedSize); refusing to shrink it without --force")
                }
                usable = wantedSize
            case .missing:
                usable = wantedSize
            }
        }
        return DataDevice(kind: kind, currentBytes: current, usableBytes: usable)
    }

    struct Message: Error { var text: String }

    /// Creates, grows (preallocated) or, with --force, shrinks a regular data file.
    func prepareDataFile(_ device: DataDevice, bytes: UInt64) throws {
        guard device.kind != .block else { return }
        let flags = device.kind == .missing ? (O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC) : (O_RDWR | O_CLOEXEC)
        let fd = Glibc.open(data, flags, 0o600)
        guard fd >= 0 else { throw Message(text: "cannot create data file \(data): \(errnoText())") }
        defer { Glibc.close(fd) }
        let undo = { if device.kind == .missing { _ = Glibc.unlink(data) } }
        if bytes < device.currentBytes {
            guard ftruncate(fd, off_t(bytes)) == 0 else { undo(); throw Message(text: "cannot shrink data file \(data): \(errnoText())") }
        }
        // Preallocate all of it (also the holes of an existing sparse file), so
        // writes into the file system never fail for lack of space underneath.
        let rc = posix_fallocate(fd, 0, off_t(bytes))
        guard rc == 0 else {
            undo()
            throw Message(text: "cannot allocate \(bytes) bytes for data file \(data): \(errnoText(rc))")
        }
    }

    /// Fills a regular data file with zeros (a block device needs no such thing).
    func zeroDataFile(_ device: DataDevice, bytes: UInt64) throws {
        guard device.kind != .block else { return }
        let fd = Glibc.open(data, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Message(text: "cannot open data file \(data): \(errnoText())") }
        defer { Glibc.close(fd) }
        let chunk = 4 << 20
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0, count: chunk)
        var offset: UInt64 = 0
        var progress = ZeroingProgress(total: bytes, shown: !quiet && isatty(STDERR_FILENO) == 1)
        while offset < bytes {
            let n = Int(min(UInt64(chunk), bytes - offset))
            let w = pwrite(fd, zeros, n, off_t(offset))
            if w < 0 && errno == EINTR { continue }
            guard w > 0 else { throw Message(text: "cannot zero data file \(data) at \(offset): \(errnoText())") }
            offset += UInt64(w)
            progress.update(offset)
        }
        progress.finish()
        guard fdatasync(fd) == 0 else { throw Message(text: "cannot sync data file \(data): \(errnoText())") }
    }

    // MARK: pool

    /// True if a file is at the pool path (and --force allows removing it).
    func examinePool() throws -> Bool {
        try checkParentDirectory(of: pool, what: "pool")
        var st = stat()
        guard stat(pool, &st) == 0 else {
            let e = errno
            guard e == ENOENT else { fail("pool \(pool): \(errnoText(e))") }
            return false
        }
        guard st.st_mode & S_IFMT == S_IFREG else { fail("pool \(pool) exists and is not a regular file") }
        // PMDK holds an exclusive flock on an open pool: a served file system.
        let fd = Glibc.open(pool, O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            defer { Glibc.close(fd) }
            if flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK {
                fail("pool \(pool) is in use by another process")
            }
            flock(fd, LOCK_UN)
        }
        if force { return true }
        do {
            let old = try MetadataStore.open(poolPath: pool, mode: .inspect)
            let what = "UUID \(formatUUID(old.uuid))" + (old.label.isEmpty ? "" : ", label '\(old.label)'")
            try? old.close()
            fail("pool \(pool) already holds a pmfs file system (\(what)); use --force to overwrite it")
        } catch {
            fail("pool \(pool) already exists and is not a usable pmfs pool (\(describe(error))); remove it or use --force")
        }
    }

    func checkParentDirectory(of path: String, what: String) throws {
        let parent = parentDirectory(path)
        var st = stat()
        guard stat(parent, &st) == 0 else {
            let e = errno
            if e == ENOENT && (parent == "/dev/shm" || parent.hasPrefix("/dev/shm/")) && access("/dev/shm", F_OK) != 0 {
                fail("directory /dev/shm does not exist: the \(what) \(path) needs a tmpfs mounted there (or choose another path)")
            }
            if e == ENOENT { fail("directory \(parent) for the \(what) \(path) does not exist") }
            fail("directory \(parent) for the \(what) \(path): \(errnoText(e))")
        }
        guard st.st_mode & S_IFMT == S_IFDIR else { fail("\(parent) (for the \(what) \(path)) is not a directory") }
        guard access(parent, W_OK) == 0 else { fail("cannot write in directory \(parent) for the \(what) \(path): \(errnoText())") }
    }

    /// Whether two paths name one file, existing or not (through links and "..").
    func sameFile(_ a: String, _ b: String) -> Bool {
        var sa = stat(), sb = stat()
        if stat(a, &sa) == 0 && stat(b, &sb) == 0 { return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino }
        func canonical(_ path: String) -> String {
            let parent = parentDirectory(path)
            guard let real = realpath(parent, nil) else { return path }
            defer { free(real) }
            return String(cString: real) + "/" + (path.split(separator: "/").last.map(String.init) ?? "")
        }
        return canonical(a) == canonical(b)
    }

    func defaultPoolSize(dataBytes: UInt64) -> UInt64 {
        let mib: UInt64 = 1 << 20
        let size = 64 * mib + dataBytes / 256
        return (size + mib - 1) / mib * mib
    }
}

// MARK: helpers

func fail(_ message: String) -> Never {
    writeError("mkfs.pmfs: \(message)\n")
    exit(1)
}

/// stderr directly: the C stream global is not concurrency-safe in Swift 6.
func writeError(_ text: String) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let n = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return }
        bytes = bytes.dropFirst(n)
    }
}

func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

func describe(_ error: Error) -> String {
    if let e = error as? PoolError { return e.description }
    return "\(error)"
}

/// A size option, or a clear error naming the option.
func parseSize(_ text: String, what: String) throws -> UInt64 {
    guard let bytes = ByteSize.parse(text) else {
        fail("bad size '\(text)' for \(what) (expected a number with an optional K, M, G or T suffix)")
    }
    return bytes
}

func parentDirectory(_ path: String) -> String {
    var p = Substring(path)
    while p.count > 1 && p.hasSuffix("/") { p = p.dropLast() }
    guard let slash = p.lastIndex(of: "/") else { return "." }
    let parent = p[..<slash]
    return parent.isEmpty ? "/" : String(parent)
}

func human(_ bytes: UInt64) -> String { ByteSize.human(bytes) }

MkfsPmfs.main()

/// "zeroing the data file: 42% (1.3 of 3.0 GiB)" on stderr, rewritten in
/// place at most twice a second, for a person at a terminal waiting on a
/// large --zero-data run (never in logs or pipes).
struct ZeroingProgress {
    let total: UInt64
    let shown: Bool
    /// When the line was last shown (monotonic ns).
    private var last: UInt64 = 0

    init(total: UInt64, shown: Bool) {
        self.total = total
        self.shown = shown && total > 0
        last = monotonicNanoseconds()
    }

    mutating func update(_ done: UInt64) {
        guard shown else { return }
        let now = monotonicNanoseconds()
        guard now &- last >= 500_000_000 || done >= total else { return }
        last = now
        let gib = { (b: UInt64) in "\(b >> 30).\(((b & ((1 << 30) - 1)) * 10) >> 30)" }
        let percent = Int(Double(done) / Double(total) * 100)
        let line = "\rzeroing the data file: \(percent)% (\(gib(done)) of \(gib(total)) GiB)"
        Self.write(line)
    }

    func finish() { if shown { Self.write("\n") } }

    private static func write(_ text: String) {
        var text = text
        text.withUTF8 { _ = Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}

