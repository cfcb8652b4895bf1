// The control protocol between pmfsd and its clients (pmfsctl, pmfsd's
// libvirt launcher): one JSON object per line, a request and then its
// response, over a root-only Unix socket. serve-fd carries a listening
// socket as SCM_RIGHTS on the request's bytes.
import FoundationEssentials
import Glibc

public enum ControlProtocol {
    /// Where pmfsctl and the launcher look when neither --control nor
    /// PMFS_CONTROL names a socket (pmfsd listens only where --control says).
    public static let defaultPath = "/run/pmfs/control.sock"
    /// A request line may not be longer (the daemon answers an error and disconnects).
    public static let maxRequestBytes = 4096
    public static let version = "0.1.0"

    /// --control, else $PMFS_CONTROL, else the default.
    public static func path(explicit: String?) -> String {
        if let explicit { return explicit }
        if let env = getenv("PMFS_CONTROL").map({ String(cString: $0) }), !env.isEmpty { return env }
        return defaultPath
    }

    public static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding these plain structs cannot fail; an empty object if it ever did.
        var bytes = (try? encoder.encode(value)).map { Array($0) } ?? Array("{}".utf8)
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    public static func decode<T: Decodable>(_ type: T.Type, from line: [UInt8]) throws -> T {
        try JSONDecoder().decode(type, from: Data(line))
    }
}

public struct ControlRequest: Codable, Sendable {
    /// info, sessions, serve-fd, snapshot, flush, reload, end-session, df, stat or stats.
    public var command: String
    /// serve-fd: the export options, as after `--fd N,` (export=/DIR,read-only,cache=...).
    public var options: String?
    /// snapshot: the tree to copy and the new directory, each relative to the
    /// file system's root or absolute under pmfsd's host mount.
    public var source: String?
    public var target: String?
    /// snapshot: every inode of the copy refuses changes (EROFS).
    public var readOnly: Bool?
    /// end-session: the listener whose guest's session ends.
    public var listener: Int?
    /// stat: the path, named as snapshot's source is.
    public var path: String?
    public init(command: String, options: String? = nil, source: String? = nil, target: String? = nil, readOnly: Bool? = nil,
                listener: Int? = nil, path: String? = nil) {
        self.command = command; self.options = options; self.source = source; self.target = target; self.readOnly = readOnly
        self.listener = listener; self.path = path
    }
}

/// What a flush did: the cache's dirty data written back, the device flushed.
public struct FlushInfo: Codable, Sendable {
    /// Dirty bytes in the write-back cache when the flush began.
    public var dirtyBytes: UInt64
    public var milliseconds: Double
    public init(dirtyBytes: UInt64, milliseconds: Double) { self.dirtyBytes = dirtyBytes; self.milliseconds = milliseconds }
}

/// What a snapshot made.
public struct SnapshotInfo: Codable, Sendable {
    /// The copy's root directory (inode number).
    public var root: UInt64
    public var inodes: Int
    public var directories: Int
    public var files: Int
    /// Data blocks the copy shares with its source.
    public var sharedBlocks: UInt64
    public var readOnly: Bool
    /// How long the writer gate was closed (write-back and copy).
    public var milliseconds: Double
    public init(root: UInt64, inodes: Int, directories: Int, files: Int, sharedBlocks: UInt64, readOnly: Bool, milliseconds: Double) {
        self.root = root; self.inodes = inodes; self.directories = directories; self.files = files
        self.sharedBlocks = sharedBlocks; self.readOnly = readOnly; self.milliseconds = milliseconds
    }
}

public struct ControlResponse: Codable, Sendable {
    public var ok: Bool
    public var error: String?
    public var info: DaemonInfo?
    public var sessions: [SessionInfo]?
    /// serve-fd: the listener the socket became.
    public var listener: Int?
    public var snapshot: SnapshotInfo?
    public var flush: FlushInfo?
    /// reload: what was applied; end-session: how the session ended.
    public var message: String?
    public var df: SpaceInfo?
    public var stat: PathStatus?
    public var stats: DaemonStatistics?
    public init(ok: Bool, error: String? = nil, info: DaemonInfo? = nil, sessions: [SessionInfo]? = nil, listener: Int? = nil,
                snapshot: SnapshotInfo? = nil, flush: FlushInfo? = nil, message: String? = nil,
                df: SpaceInfo? = nil, stat: PathStatus? = nil, stats: DaemonStatistics? = nil) {
        self.ok = ok; self.error = error; self.info = info; self.sessions = sessions; self.listener = listener; self.snapshot = snapshot
        self.flush = flush; self.message = message; self.df = df; self.stat = stat; self.stats = stats
    }
    public static func failure(_ message: String) -> ControlResponse { ControlResponse(ok: false, error: message) }
}

public struct DaemonInfo: Codable, Sendable {
    public var version: String
    public var pid: Int32
    public var pool: String
    public var data: String
    /// The host mount point, nil when pmfsd serves guests only.
    public var mount: String?
    public var exports: [ListenerInfo]
    public init(version: String, pid: Int32, pool: String, data: String, mount: String?, exports: [ListenerInfo]) {
        self.version = version; self.pid = pid; self.pool = pool; self.data = data; self.mount = mount; self.exports = exports
    }
}

/// A guest socket pmfsd listens on and what its guests see.
public struct ListenerInfo: Codable, Sendable {
    public var id: Int
    public var socket: String
    public var export: String
    public var readOnly: Bool
    public var cache: String
    public var locks: String
    /// "command line", or "control (pid N)" for a socket given with serve-fd.
    public var origin: String
    public init(id: Int, socket: String, export: String, readOnly: Bool, cache: String, locks: String, origin: String) {
        self.id = id; self.socket = socket; self.export = export; self.readOnly = readOnly
        self.cache = cache; self.locks = locks; self.origin = origin
    }
}

/// A FUSE session: the host mount (listener nil) or a guest listener's.
public struct SessionInfo: Codable, Sendable {
    public var session: UInt64
    public var listener: Int?
    public var socket: String
    public var export: String
    /// Whether the peer has sent FUSE INIT and not gone away since.
    public var connected: Bool
    /// When that INIT came (seconds since 1970), nil when not connected.
    public var since: Double?
    public var openHandles: Int
    /// Inodes the peer's kernel holds references to (its lookup counts).
    public var heldInodes: Int
    /// Lock records (POSIX ranges, flocks) the session holds in pmfsd's table.
    public var lockRecords: Int?
    /// FUSE requests taken from the session since pmfsd started serving it.
    public var requests: UInt64?
    /// Queues with a running worker (a guest's; nil for the host mount).
    public var queues: Int?
    public init(session: UInt64, listener: Int?, socket: String, export: String, connected: Bool, since: Double?, openHandles: Int, heldInodes: Int,
                lockRecords: Int? = nil, requests: UInt64? = nil, queues: Int? = nil) {
        self.session = session; self.listener = listener; self.socket = socket; self.export = export
        self.connected = connected; self.since = since; self.openHandles = openHandles; self.heldInodes = heldInodes
        self.lockRecords = lockRecords; self.requests = requests; self.queues = queues
    }
}
