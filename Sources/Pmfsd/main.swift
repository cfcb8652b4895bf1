// pmfsd: serves a pmfs file system. Today: a host mount through /dev/fuse.
import ArgumentParser
import Dispatch
import FUSEDevice
import FUSEProtocol
import Glibc
import Logging
import PMFSCore
import PMFSData
import PMFSMetadata
import PMFSServer

struct Pmfsd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmfsd",
        abstract: "Serve a pmfs file system (metadata pool + data device) through FUSE.")

    @Option(help: "The metadata pool (made by mkfs.pmfs).")
    var pool: String

    @Option(help: "The data device or preallocated data file.")
    var data: String

    @Option(help: "Mount the file system here on the host (/dev/fuse).")
    var mount: String

    @Option(help: "Write-back cache size, with K/M/G suffix.")
    var cacheSize: String = "256M"

    @Option(help: "I/O engine: auto, io_uring or threads.")
    var ioEngine: String = "auto"

    @Option(help: "Worker threads reading FUSE requests.")
    var workers: Int = 4

    @Flag(help: "Write-through: no write-back caching of file data (for comparison).")
    var writeThrough = false

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "pmfsd")
        guard let engine = IOEngineChoice(rawValue: ioEngine) else {
            throw ValidationError("--io-engine must be auto, io_uring or threads")
        }
        guard let cacheBytes = parseSize(cacheSize), cacheBytes >= 64 << 10 else {
            throw ValidationError("--cache-size: a size of at least 64K, like 256M")
        }
        do {
            guard let header = try DataDeviceHeader.read(from: data) else {
                throw PoolError.dataDevice(path: data, reason: "no pmfs header (not made by mkfs.pmfs)")
            }
            let metadata = try MetadataStore.open(poolPath: pool, dataDevice: header, logger: Logger(label: "pmfs.metadata"))
            if metadata.recoveredFromUncleanShutdown {
                logger.notice("recovered after an unclean stop: \(metadata.reclaimedOrphans) orphan(s) reclaimed")
            }
            let device = try DataDevice(path: data, engine: engine)
            var options = FileSystem.Options()
            options.cacheBytes = cacheBytes
            options.writeBack = !writeThrough
            let fs = try FileSystem(metadata: metadata, device: device, options: options)
            let operations = PMFSOperations(metadata: metadata, fs: fs)
            let server = FUSEServer(operations: operations)
            let host = try FUSEMount(mountPoint: mount, server: server, fsName: "pmfs")
            logger.notice("serving \(pool) on \(host.mountPoint) (engine \(device.engine.name), cache \(cacheBytes >> 20) MiB)")

            // SIGTERM / SIGINT: unmount; the workers then return and we shut down cleanly.
            signal(SIGTERM, SIG_IGN)
            signal(SIGINT, SIG_IGN)
            let signals = [SIGTERM, SIGINT].map { sig -> DispatchSourceSignal in
                let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                s.setEventHandler { logger.notice("signal \(sig): unmounting"); host.unmount() }
                s.resume()
                return s
            }
            host.serve(workers: workers)
            _ = signals
            try fs.shutdown()
            device.close()
            try metadata.close()
            logger.notice("stopped cleanly")
        } catch let e as PoolError {
            throw CleanExit.message("pmfsd: \(e)")
        } catch let e as FUSEMountError {
            throw CleanExit.message("pmfsd: \(e)")
        } catch let e as DataDeviceError {
            throw CleanExit.message("pmfsd: \(e)")
        }
    }
}

func parseSize(_ s: String) -> Int? {
    guard let last = s.last else { return nil }
    let shift: Int
    var digits = Substring(s)
    switch last {
    case "K", "k": shift = 10; digits = digits.dropLast()
    case "M", "m": shift = 20; digits = digits.dropLast()
    case "G", "g": shift = 30; digits = digits.dropLast()
    default: shift = 0
    }
    guard let v = Int(digits), v >= 0, v < (1 << (62 - shift)) else { return nil }
    return v << shift
}

Pmfsd.main()
