import CFUSE
import FUSEProtocol
import Glibc
import PMFSMetadata
import SystemPackage

// Exports: what one guest socket sees of the file system and may do in it.
// A guest's FUSE root (nodeid 1) is its export directory; ids in its requests
// are translated guest→host and in replies host→guest; a read-only export
// refuses every change; device nodes and set-id bits follow the policy.

/// A bad export option or an export that cannot be served.
public struct ExportError: Error, CustomStringConvertible, Equatable, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// One range of an id map: guest ids `guest ..< guest+count` are host ids
/// `host ..< host+count` (virtiofsd's `--translate-uid map:GUEST:HOST:COUNT`).
public struct IDRange: Sendable, Equatable {
    public let guest: UInt32, host: UInt32, count: UInt32

    /// Both ends must fit in 32 bits and the range must not be empty.
    public init(guest: UInt32, host: UInt32, count: UInt32) throws(ExportError) {
        let limit = UInt64(UInt32.max) + 1
        guard count > 0 else { throw ExportError("an id range needs a count of at least 1") }
        guard UInt64(guest) + UInt64(count) <= limit, UInt64(host) + UInt64(count) <= limit else {
            throw ExportError("id range \(guest):\(host):\(count) goes past 4294967295")
        }
        self.guest = guest; self.host = host; self.count = count
    }

    /// "GUEST:HOST:COUNT", decimal.
    public init(parsing text: Substring) throws(ExportError) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3, let g = UInt32(parts[0]), let h = UInt32(parts[1]), let c = UInt32(parts[2]) else {
            throw ExportError("'\(text)' is not GUEST:HOST:COUNT (three decimal numbers)")
        }
        try self.init(guest: g, host: h, count: c)
    }

    func contains(guest id: UInt32) -> Bool { id >= guest && UInt64(id) < UInt64(guest) + UInt64(count) }
    func contains(host id: UInt32) -> Bool { id >= host && UInt64(id) < UInt64(host) + UInt64(count) }
    func overlaps(_ o: IDRange) -> Bool {
        func meet(_ a: UInt32, _ b: UInt32) -> Bool {
            UInt64(a) < UInt64(b) + UInt64(o.count) && UInt64(b) < UInt64(a) + UInt64(count)
        }
        return meet(guest, o.guest) || meet(host, o.host)
    }
}

/// Guest↔host translation of uids or gids. No ranges: ids pass unchanged.
/// With ranges, a host id outside them shows to the guest as the overflow id
/// (65534, as the kernel's user namespaces do), and a guest id outside them
/// has no host id (the caller refuses what would need one).
public struct IDMap: Sendable, Equatable {
    public static let overflowID: UInt32 = 65534
    public let ranges: [IDRange]
    public static let identity = IDMap(checked: [])

    private init(checked ranges: [IDRange]) { self.ranges = ranges }

    /// Ranges may not overlap on either side, or a translation would not be one-to-one.
    public init(_ ranges: [IDRange]) throws(ExportError) {
        for (i, r) in ranges.enumerated() {
            if let o = ranges[..<i].first(where: { $0.overlaps(r) }) {
                throw ExportError("id ranges \(o.guest):\(o.host):\(o.count) and \(r.guest):\(r.host):\(r.count) overlap")
            }
        }
        self.init(checked: ranges)
    }

    public var isIdentity: Bool { ranges.isEmpty }

    /// The host id for a guest's, nil when the map does not cover it.
    public func host(_ id: UInt32) -> UInt32? {
        if ranges.isEmpty { return id }
        guard let r = ranges.first(where: { $0.contains(guest: id) }) else { return nil }
        return r.host + (id - r.guest)
    }

    /// The guest id for a host's, the overflow id when the map does not cover it.
    public func guest(_ id: UInt32) -> UInt32 {
        if ranges.isEmpty { return id }
        guard let r = ranges.first(where: { $0.contains(host: id) }) else { return Self.overflowID }
        return r.guest + (id - r.host)
    }
}

/// What a session may see and do: the export directory (a path inside pmfs),
/// read-only or not, id maps, and whether device nodes and set-id bits are allowed.
public struct ExportPolicy: Sendable, Equatable {
    public var path: String
    public var readOnly: Bool
    public var uids: IDMap
    public var gids: IDMap
    /// MKNOD of character and block devices (EPERM when not allowed).
    public var devices: Bool
    /// Set-user-ID and set-group-ID bits in modes the peer sends (stripped when not allowed).
    public var setID: Bool

    public init(path: String = "/", readOnly: Bool = false, uids: IDMap = .identity, gids: IDMap = .identity,
                devices: Bool, setID: Bool) {
        self.path = path; self.readOnly = readOnly; self.uids = uids; self.gids = gids
        self.devices = devices; self.setID = setID
    }

    /// The host mount: the whole tree, anything goes (the host kernel is trusted).
    public static let host = ExportPolicy(devices: true, setID: true)
    /// A guest socket's starting point: the whole tree, no device nodes, no
    /// set-id bits (GuestListenerSpec.settleSharing allows both where one guest
    /// alone serves the export).
    public static let guest = ExportPolicy(devices: false, setID: false)

    /// Parses the comma-separated options after a socket path or fd:
    /// `export=PATH`, `read-only`, `uid-map=G:H:C`, `gid-map=G:H:C` (each may
    /// repeat), `devices=allow|deny`, `setid=allow|strip`.
    public static func parse(options: [Substring]) throws(ExportError) -> ExportPolicy {
        var policy = ExportPolicy.guest
        var seen = Set<Substring>()
        var uidRanges: [IDRange] = [], gidRanges: [IDRange] = []
        for option in options {
            let key = option.split(separator: "=", maxSplits: 1).first ?? option
            let value = option.dropFirst(key.count + 1)
            let hasValue = option.count > key.count
            let repeatable = key == "uid-map" || key == "gid-map"
            guard repeatable || seen.insert(key).inserted else { throw ExportError("option '\(key)' given twice") }
            switch key {
            case "export":
                guard hasValue, value.hasPrefix("/") else { throw ExportError("export= needs an absolute path inside the file system, like export=/vms/vm1") }
                policy.path = String(value)
            case "read-only":
                guard !hasValue else { throw ExportError("read-only takes no value") }
                policy.readOnly = true
            case "uid-map": uidRanges.append(try IDRange(parsing: value))
            case "gid-map": gidRanges.append(try IDRange(parsing: value))
            case "devices":
                guard let allow = choice(value, yes: "allow", no: "deny") else { throw ExportError("devices= must be allow or deny") }
                policy.devices = allow
            case "setid":
                guard let allow = choice(value, yes: "allow", no: "strip") else { throw ExportError("setid= must be allow or strip") }
                policy.setID = allow
            case "":
                throw ExportError("empty option (two commas in a row, or a trailing comma)")
            default:
                throw ExportError("unknown option '\(key)' (export=, read-only, uid-map=, gid-map=, devices=, setid=, cache=, locks=)")
            }
        }
        do {
            policy.uids = try IDMap(uidRanges)
            policy.gids = try IDMap(gidRanges)
        } catch { throw ExportError("\(error)") }
        return policy
    }

    private static func choice(_ value: Substring, yes: String, no: String) -> Bool? {
        value == yes ? true : (value == no ? false : nil)
    }

    /// The components of `path`, each a valid name; "." and ".." are refused
    /// so the export is exactly the directory named.
    func components() throws(ExportError) -> [FileName] {
        var names: [FileName] = []
        for part in path.split(separator: "/") {
            guard part != "." && part != ".." else { throw ExportError("export=\(path): '.' and '..' are not allowed in the path") }
            do { names.append(try FileName(String(part))) } catch { throw ExportError("export=\(path): bad name '\(part)'") }
        }
        return names
    }
}

/// A guest socket or inherited descriptor as given on the command line:
/// `TARGET[,option...]` (a socket path or an fd number, then export options).
/// A socket path cannot itself contain a comma.
public struct GuestListenerSpec: Sendable, Equatable {
    public var target: String
    public var policy: ExportPolicy
    /// Whether devices= and setid= were given (else `settleSharing` decides).
    public var namesDevices = false
    public var namesSetID = false
    /// What this listener's guests may cache (`cache=none|auto|always`; nil: the daemon's --cache).
    public var cache: PMFSOperations.CachePolicy?
    /// Where this listener's guests' locks live (`locks=shared|local`; nil: the daemon's --locks).
    public var locks: String?

    public static func parse(_ text: String) throws(ExportError) -> GuestListenerSpec {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        guard let first = parts.first, !first.isEmpty else { throw ExportError("'\(text)': the socket path or fd comes first") }
        return try parse(target: String(first), options: Array(parts.dropFirst()))
    }

    /// The listener `target` (a socket path or fd number) with options in the
    /// `--socket` syntax, one per element (a configuration file's keys become these).
    public static func parse(target: String, options given: [Substring]) throws(ExportError) -> GuestListenerSpec {
        // cache= and locks= are how the session is served, not what it sees: not part of the policy.
        var options: [Substring] = []
        var cache: PMFSOperations.CachePolicy?, locks: String?
        for option in given {
            if option.hasPrefix("cache=") {
                guard cache == nil else { throw ExportError("option 'cache' given twice") }
                guard let c = PMFSOperations.CachePolicy(rawValue: String(option.dropFirst(6))) else { throw ExportError("cache= must be none, auto or always") }
                cache = c
            } else if option.hasPrefix("locks=") {
                guard locks == nil else { throw ExportError("option 'locks' given twice") }
                let l = String(option.dropFirst(6))
                guard l == "shared" || l == "local" else { throw ExportError("locks= must be shared or local") }
                locks = l
            } else {
                options.append(option)
            }
        }
        var spec = GuestListenerSpec(target: target, policy: try ExportPolicy.parse(options: options))
        spec.cache = cache
        spec.locks = locks
        spec.namesDevices = options.contains { $0.hasPrefix("devices=") }
        spec.namesSetID = options.contains { $0.hasPrefix("setid=") }
        return spec
    }

    /// Device nodes and set-id bits where the options do not say: allowed on
    /// an export that one guest alone serves (it is then that VM's own disk,
    /// as with virtiofsd), refused and stripped on a tree several guests share,
    /// so one VM's root cannot plant a set-uid shell or a device node for
    /// another VM's users.
    public static func settleSharing(_ specs: inout [GuestListenerSpec]) {
        for i in specs.indices {
            let shared = specs.indices.contains { $0 != i && Self.overlap(specs[$0].policy.path, specs[i].policy.path) }
            if !specs[i].namesDevices { specs[i].policy.devices = !shared }
            if !specs[i].namesSetID { specs[i].policy.setID = !shared }
        }
    }

    /// Whether one export directory lies inside the other (or is it).
    static func overlap(_ a: String, _ b: String) -> Bool {
        func parts(_ p: String) -> [Substring] { p.split(separator: "/") }
        let (x, y) = (parts(a), parts(b))
        return x.starts(with: y) || y.starts(with: x)
    }
}

/// An export resolved in a file system: the policy and the inode that is the
/// session's root (nodeid 1). The whole tree has root 1.
public struct Export: Sendable {
    public let policy: ExportPolicy
    public let root: UInt64

    /// The host mount: the whole tree, nothing changed.
    public static let wholeTree = Export(policy: .host, root: UInt64(FUSE_ROOT_ID))

    public init(policy: ExportPolicy, root: UInt64) { self.policy = policy; self.root = root }

    /// Finds the export directory (one lookup per component, symbolic links
    /// not followed) and pins it, so an rmdir while it is served leaves it an
    /// empty orphan instead of an inode number that could be reused.
    public static func open(_ policy: ExportPolicy, in metadata: MetadataStore) throws(ExportError) -> Export {
        var ino = UInt64(FUSE_ROOT_ID)
        do {
            for name in try policy.components() {
                let a = try metadata.lookup(ino, name, pin: false)
                guard a.type == .directory else { throw ExportError("export=\(policy.path): \(name) is not a directory") }
                ino = a.ino
            }
            if ino != UInt64(FUSE_ROOT_ID) { try metadata.pin(ino) }
        } catch let e as ExportError {
            throw e
        } catch Errno.noSuchFileOrDirectory {
            throw ExportError("export=\(policy.path): no such directory in the file system")
        } catch {
            throw ExportError("export=\(policy.path): \(error)")
        }
        return Export(policy: policy, root: ino)
    }

    /// Whether the session sees less than the whole tree.
    public var confined: Bool { root != UInt64(FUSE_ROOT_ID) }

    // MARK: node IDs

    /// The inode a node ID names: nodeid 1 is the export directory.
    @inline(__always)
    func inode(_ nodeid: UInt64) -> UInt64 { nodeid == UInt64(FUSE_ROOT_ID) ? root : nodeid }

    /// The node ID the peer knows an inode by.
    @inline(__always)
    func nodeid(_ ino: UInt64) -> UInt64 { ino == root ? UInt64(FUSE_ROOT_ID) : ino }

    /// Whether directory `dir` lies in the export (walks up its `..`): false
    /// for one the host moved out while the guest held it. Bounded, so a
    /// damaged parent chain cannot loop.
    func contains(directory dir: UInt64, _ metadata: MetadataStore) throws -> Bool {
        guard confined else { return true }
        let dotDot = try FileName(bytes: [0x2E, 0x2E])
        var d = dir
        for _ in 0..<4096 {
            if d == root { return true }
            if d == UInt64(FUSE_ROOT_ID) { return false }
            let up = try metadata.lookup(d, dotDot, pin: false).ino
            if up == d { return false }
            d = up
        }
        return false
    }

    // MARK: policy

    /// EROFS on a read-only export.
    @inline(__always)
    func requireWritable() throws {
        if policy.readOnly { throw FUSEError(EROFS) }
    }

    /// A mode from the peer with set-id bits removed unless the export allows them.
    func admitted(mode: UInt32) -> UInt32 {
        policy.setID ? mode : mode & ~UInt32(0o6000)
    }

    /// EPERM for a character or block device where the export forbids them.
    func requireNodeAllowed(mode: UInt32) throws {
        let type = mode & 0o170000
        if !policy.devices && (type == 0o020000 || type == 0o060000) { throw FUSEError(EPERM) }
    }

    /// File capabilities give privileges on exec as set-id bits do: setting
    /// them is EPERM where set-id bits are stripped.
    func requireXattrAllowed(_ name: [UInt8]) throws {
        if !policy.setID && name == Self.capabilityXattr { throw FUSEError(EPERM) }
    }
    static let capabilityXattr = Array("security.capability".utf8)

    // MARK: ids

    /// The host ids for a caller who creates something. A caller whose guest
    /// ids are not mapped cannot own anything: EOVERFLOW, as Linux answers in a
    /// user namespace without a mapping.
    func hostOwner(uid: UInt32, gid: UInt32) throws -> (uid: UInt32, gid: UInt32) {
        guard let u = policy.uids.host(uid), let g = policy.gids.host(gid) else { throw FUSEError(EOVERFLOW) }
        return (u, g)
    }

    /// The host id for a caller in a permission check; an unmapped caller is
    /// the overflow id, which owns nothing the guest can see mapped.
    func hostCaller(uid: UInt32, gid: UInt32) -> (uid: UInt32, gid: UInt32) {
        (policy.uids.host(uid) ?? IDMap.overflowID, policy.gids.host(gid) ?? IDMap.overflowID)
    }

    /// SETATTR's new owner or group in host ids; EINVAL for an unmapped one, as chown(2).
    func hostID(uid: UInt32?) throws -> UInt32? {
        guard let uid else { return nil }
        guard let h = policy.uids.host(uid) else { throw FUSEError(EINVAL) }
        return h
    }

    func hostID(gid: UInt32?) throws -> UInt32? {
        guard let gid else { return nil }
        guard let h = policy.gids.host(gid) else { throw FUSEError(EINVAL) }
        return h
    }

    /// Attributes as the peer sees them: its node ID, its ids.
    func guestView(_ a: FUSEAttributes) -> FUSEAttributes {
        var v = a
        v.ino = nodeid(a.ino)
        v.uid = policy.uids.guest(a.uid)
        v.gid = policy.gids.guest(a.gid)
        return v
    }
}

/// The two checks that need the engine: where ".." leads, and whether a
/// directory still lies in the export.
extension PMFSOperations {
    /// A lookup that cannot leave the export: ".." of the export's directory
    /// is that directory (as in a chroot), and ".." of a directory the host
    /// moved out of the export is not answered.
    /// `name` is checked as `FileName` checks it, where it lies.
    func lookupInExport(_ parent: UInt64, _ name: UnsafeRawBufferPointer) throws -> InodeAttributes {
        let dotDot = name.count == 2 && name[0] == 0x2E && name[1] == 0x2E
        guard export.confined, dotDot else { return try metadata.lookup(parent, nameBytes: name, pin: true) }
        if parent == export.root { return try metadata.lookup(parent, try fileName([0x2E]), pin: true) }
        guard try export.contains(directory: parent, metadata) else { throw FUSEError(ENOENT) }
        return try metadata.lookup(parent, nameBytes: name, pin: true)
    }

    /// EXDEV when a directory a confined session names lies outside its export
    /// (the host moved it out while the guest held it): nothing crosses the boundary.
    func requireInsideExport(_ dirs: UInt64...) throws {
        guard export.confined else { return }
        for d in dirs where try !export.contains(directory: d, metadata) { throw FUSEError(EXDEV) }
    }
}
