import Glibc
import PMFSData
import SystemPackage
import Testing
@testable import PMFSCore
@testable import PMFSMetadata

/// kill -9 of a process writing and fsyncing through the data tier, many times:
/// after each kill the pool reopens (recovering), space accounting is exact, and
/// every byte an fsync promised is there. Bytes written after a file's last
/// fsync may be old or new, a whole 4 KiB block at a time; the size is one the
/// file had at or after that fsync.
@Suite(.serialized) struct DataCrashTests {
    static let kills: Int = getenv("PMFS_DATA_CRASH_KILLS").flatMap { Int(String(cString: $0)) } ?? 50

    static var writerPath: String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let exe = String(decoding: buffer[..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return String(exe[..<(exe.lastIndex(of: "/") ?? exe.endIndex)]) + "/pmfs-crash-writer"
    }

    static func bytes(seed: UInt64, length: Int) -> [UInt8] {
        var x = seed | 1
        return (0..<length).map { _ in
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            return UInt8(truncatingIfNeeded: x)
        }
    }

    /// What the log says about one file: its content at its last fsync, and the
    /// states it went through after.
    struct FileHistory {
        var synced: [UInt8] = []
        var after: [[UInt8]] = []       // states after each later write
        var current: [UInt8] = []
    }

    @Test func killedWritersLoseNoFsyncedByte() throws {
        guard access(Self.writerPath, X_OK) == 0 else {
            Issue.record("\(Self.writerPath) is not built")
            return
        }
        let t = try CoreFixture(dataBlocks: 8192)
        try t.fs.shutdown()
        t.device.close()
        try t.metadata.close()
        t.fs = nil; t.device = nil; t.metadata = nil
        let logPath = t.poolPath + ".log"
        defer { unlink(logPath) }
        var histories = [FileHistory](repeating: FileHistory(), count: 3)
        var rng = SplitMix64(seed: 42)
        var syncsSeen = 0
        for kill in 0..<Self.kills {
            unlink(logPath)
            let seed = rng.next()
            let pid = try spawn([Self.writerPath, t.poolPath, t.dataPath, logPath, String(seed)])
            // Let it start, then kill it somewhere in its work.
            let delay = UInt32.random(in: 0...150_000, using: &rng)
            usleep(60_000 + delay)
            Glibc.kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            let log = Self.readFile(logPath)
            #expect(log.hasPrefix("READY") || log.isEmpty, "kill \(kill) seed \(seed): writer failed: \(log.prefix(200))")

            // Replay the log into the histories.
            for line in log.split(separator: "\n") {
                let f: [String] = line.split(separator: " ").map(String.init)
                let n: [UInt64] = f.dropFirst().compactMap { UInt64($0) }
                if f.first == "W", f.count == 6, n.count == 5 {
                    let file = Int(n[1]), off = Int(n[2]), len = Int(n[3]), s = n[4]
                    var c = histories[file].current
                    if c.count < off + len { c += [UInt8](repeating: 0, count: off + len - c.count) }
                    c.replaceSubrange(off..<(off + len), with: Self.bytes(seed: s, length: len))
                    histories[file].current = c
                    histories[file].after.append(c)
                } else if f.first == "S", f.count == 3, n.count == 2 {
                    let file = Int(n[1])
                    histories[file].synced = histories[file].current
                    histories[file].after = []
                    syncsSeen += 1
                }
            }

            // Reopen as after a crash and check every file.
            let header = try DataDeviceHeader.read(from: t.dataPath)
            let metadata = try MetadataStore.open(poolPath: t.poolPath, dataDevice: header)
            let device = try DataDevice(path: t.dataPath)
            let fs = try FileDataTier(metadata: metadata, device: device)
            var usedByFiles: UInt64 = 0
            for file in 0..<3 {
                guard let ino = try? metadata.lookup(1, try FileName("file\(file)")).ino else { continue }
                let h = histories[file]
                let size = Int(try fs.getattr(ino).size)
                let sizes = Set([h.synced.count] + h.after.map(\.count))
                #expect(sizes.contains(size), "kill \(kill) seed \(seed) file \(file): size \(size) not in \(sizes.sorted())")
                var got = [UInt8](repeating: 0, count: size)
                _ = try got.withUnsafeMutableBytes { try fs.read(ino, offset: 0, into: $0) }
                // Each block must be the synced version or a later one.
                let candidates = [h.synced] + h.after
                var block = 0
                while block * 4096 < size {
                    let range = (block * 4096)..<min(size, block * 4096 + 4096)
                    let ok = candidates.contains { c in
                        range.allSatisfy { i in (i < c.count ? c[i] : 0) == got[i] }
                    }
                    if !ok {
                        Issue.record("kill \(kill) seed \(seed) file \(file): block \(block) matches no state since the last fsync")
                        break
                    }
                    block += 1
                }
                // The recovered content becomes the new synced state (it is what the next writer starts from).
                histories[file] = FileHistory(synced: got, after: [], current: got)
                let mapped = try metadata.mapBlocks(ino, start: 0, count: 2048).filter { $0.deviceBlock != nil }.reduce(0) { $0 + $1.length }
                usedByFiles += mapped
            }
            let stats = metadata.statistics()
            #expect(stats.totalBlocks - stats.freeBlocks == usedByFiles, "kill \(kill) seed \(seed): space leaked after recovery")
            try fs.shutdown()
            device.close()
            try metadata.close()
        }
        #expect(syncsSeen > Self.kills / 2, "too few fsyncs reached: the test would prove little")
    }

    static func readFile(_ path: String) -> String {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buffer[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    func spawn(_ argv: [String]) throws -> pid_t {
        var pid: pid_t = 0
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        let rc = PoolDescriptors.withSpawnLock { posix_spawn(&pid, argv[0], nil, nil, &cArgs, environ) }
        guard rc == 0 else { throw Errno(rawValue: rc) }
        return pid
    }
}
