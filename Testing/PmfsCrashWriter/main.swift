// The child process of the data crash tests: writes and fsyncs random data into
// a few files of a served pmfs until it is killed. Before each write it logs
// "W seq file offset length seed"; after each fsync returns, "S seq file". The
// parent replays the log to know exactly which bytes fsync promised.
import Glibc
import Logging
import PMFSCore
import PMFSData
import PMFSMetadata

func fail(_ message: String) -> Never {
    let line = Array("pmfs-crash-writer: \(message)\n".utf8)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(2)
}

let args = CommandLine.arguments
guard args.count == 5, let seed = UInt64(args[4]) else {
    fail("usage: pmfs-crash-writer POOL DATA LOG SEED")
}
let (poolPath, dataPath, logPath) = (args[1], args[2], args[3])

/// The bytes of a write, from its seed (DataCrashTests computes the same).
func crashWriterBytes(seed: UInt64, length: Int) -> [UInt8] {
    var x = seed | 1
    return (0..<length).map { _ in
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        return UInt8(truncatingIfNeeded: x)
    }
}


let log = open(logPath, O_WRONLY | O_APPEND | O_CREAT, 0o600)
guard log >= 0 else { fail("cannot open log \(logPath)") }
func record(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    guard bytes.withUnsafeBytes({ write(log, $0.baseAddress, $0.count) }) == bytes.count else { fail("log write failed") }
}

do {
    LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
    let metadata = try MetadataStore.open(poolPath: poolPath, dataDevice: try DataDeviceHeader.read(from: dataPath))
    let device = try DataDevice(path: dataPath)
    var options = FileDataTier.Options()
    options.cacheBytes = 1 << 20                // small, so throttling write-back happens too
    options.writeBackAgeMilliseconds = 30       // and background write-back
    let fs = try FileDataTier(metadata: metadata, device: device, options: options)
    var inos: [UInt64] = []
    for i in 0..<3 {
        let name = try FileName("file\(i)")
        let existing = try? metadata.lookup(1, name).ino
        let ino = try existing ?? metadata.create(1, name, NewInode(mode: UInt32(S_IFREG) | 0o644)).ino
        inos.append(ino)
    }
    record("READY")
    var rng = SplitMix64(seed: seed)
    var seq = 0
    while true {
        seq += 1
        let file = Int.random(in: 0..<3, using: &rng)
        if Int.random(in: 0..<4, using: &rng) == 0 {
            try fs.fsync(inos[file], dataOnly: Bool.random(using: &rng))
            record("S \(seq) \(file)")
        } else {
            let offset = UInt64.random(in: 0..<(2 << 20), using: &rng)
            let length = Int.random(in: 1...(Bool.random(using: &rng) ? 4096 : 65536), using: &rng)
            let dataSeed = rng.next()
            record("W \(seq) \(file) \(offset) \(length) \(dataSeed)")
            let bytes = crashWriterBytes(seed: dataSeed, length: length)
            _ = try bytes.withUnsafeBytes { try fs.write(inos[file], offset: offset, from: $0) }
        }
    }
} catch {
    fail("\(error)")
}
