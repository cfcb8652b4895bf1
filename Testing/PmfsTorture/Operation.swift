import PMFSMetadata
import SystemPackage

/// Explicit attribute changes of a setattr operation (nil = unchanged).
/// Times are whole seconds so the log line carries them exactly.
struct SetattrSpec: Equatable, Sendable {
    var mode: UInt32?
    var uid: UInt32?
    var size: UInt64?
    var atime: Int64?
    var mtime: Int64?
}

/// One operation of the torture run: what the child executes and the log records.
/// Files are named by absolute path; the parent replays the same lines into its model.
enum TortureOp: Equatable, Sendable {
    case create(String, UInt32)
    case mkdir(String, UInt32)
    case symlink(String, String)
    case link(String, String)
    case unlink(String)
    case rmdir(String)
    case rename(String, String, UInt32)
    case setattr(String, SetattrSpec)
    /// path, attribute name, value, 0 = any, 1 = create, 2 = replace
    case setxattr(String, String, [UInt8], Int)
    case removexattr(String, String)
    case allocate(String, UInt64, UInt64)
    case punch(String, UInt64, UInt64)
    /// what the data tier's write-back commits for file blocks [start, +count):
    /// holes get new blocks, blocks shared with a clone or snapshot are copied
    /// on write (new blocks replace them in one transaction)
    case write(String, UInt64, UInt64)
    /// pin the file, then unlink it: it stays on the orphan list until unpinned or reopened
    case orphan(String, Int)
    /// drop the pin of orphan handle k (reclaims it); invisible in the tree
    case unpin(Int)
    /// an unnamed file (O_TMPFILE) under handle k
    case tmpfile(Int, UInt32)
    /// give unnamed file k a name
    case linkTmp(Int, String)
    /// a copy of tree source at target (MetadataStore.snapshot), read-only if 1
    case snapshot(String, String, Int)

    /// The log form: space-separated tokens; names never contain spaces.
    var line: String {
        func opt<T>(_ v: T?) -> String { v.map { "\($0)" } ?? "-" }
        switch self {
        case .create(let p, let m): return "create \(p) \(m)"
        case .mkdir(let p, let m): return "mkdir \(p) \(m)"
        case .symlink(let p, let t): return "symlink \(p) \(t)"
        case .link(let a, let b): return "link \(a) \(b)"
        case .unlink(let p): return "unlink \(p)"
        case .rmdir(let p): return "rmdir \(p)"
        case .rename(let a, let b, let f): return "rename \(a) \(b) \(f)"
        case .setattr(let p, let s):
            return "setattr \(p) \(opt(s.mode)) \(opt(s.uid)) \(opt(s.size)) \(opt(s.atime)) \(opt(s.mtime))"
        case .setxattr(let p, let n, let v, let m): return "setxattr \(p) \(n) \(hex(v)) \(m)"
        case .removexattr(let p, let n): return "removexattr \(p) \(n)"
        case .allocate(let p, let s, let c): return "allocate \(p) \(s) \(c)"
        case .punch(let p, let s, let c): return "punch \(p) \(s) \(c)"
        case .orphan(let p, let k): return "orphan \(p) \(k)"
        case .unpin(let k): return "unpin \(k)"
        case .tmpfile(let k, let m): return "tmpfile \(k) \(m)"
        case .linkTmp(let k, let p): return "linktmp \(k) \(p)"
        case .snapshot(let a, let b, let r): return "snapshot \(a) \(b) \(r)"
        case .write(let p, let s, let c): return "write \(p) \(s) \(c)"
        }
    }

    init?(line: String) {
        let t = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard let verb = t.first else { return nil }
        func u32(_ i: Int) -> UInt32? { i < t.count ? UInt32(t[i]) : nil }
        func u64(_ i: Int) -> UInt64? { i < t.count ? UInt64(t[i]) : nil }
        func int(_ i: Int) -> Int? { i < t.count ? Int(t[i]) : nil }
        func str(_ i: Int) -> String? { i < t.count ? t[i] : nil }
        func optional<T>(_ i: Int, _ parse: (String) -> T?) -> T?? {
            guard i < t.count else { return nil }
            if t[i] == "-" { return .some(nil) }
            guard let v = parse(t[i]) else { return nil }
            return .some(v)
        }
        switch verb {
        case "create": guard let p = str(1), let m = u32(2) else { return nil }; self = .create(p, m)
        case "mkdir": guard let p = str(1), let m = u32(2) else { return nil }; self = .mkdir(p, m)
        case "symlink": guard let p = str(1), let x = str(2) else { return nil }; self = .symlink(p, x)
        case "link": guard let a = str(1), let b = str(2) else { return nil }; self = .link(a, b)
        case "unlink": guard let p = str(1) else { return nil }; self = .unlink(p)
        case "rmdir": guard let p = str(1) else { return nil }; self = .rmdir(p)
        case "rename": guard let a = str(1), let b = str(2), let f = u32(3) else { return nil }; self = .rename(a, b, f)
        case "setattr":
            guard let p = str(1), let m = optional(2, { UInt32($0) }), let u = optional(3, { UInt32($0) }),
                  let s = optional(4, { UInt64($0) }), let a = optional(5, { Int64($0) }), let mt = optional(6, { Int64($0) })
            else { return nil }
            self = .setattr(p, SetattrSpec(mode: m, uid: u, size: s, atime: a, mtime: mt))
        case "setxattr":
            guard let p = str(1), let n = str(2), let v = str(3).flatMap(unhex), let m = int(4) else { return nil }
            self = .setxattr(p, n, v, m)
        case "removexattr": guard let p = str(1), let n = str(2) else { return nil }; self = .removexattr(p, n)
        case "allocate": guard let p = str(1), let s = u64(2), let c = u64(3) else { return nil }; self = .allocate(p, s, c)
        case "punch": guard let p = str(1), let s = u64(2), let c = u64(3) else { return nil }; self = .punch(p, s, c)
        case "orphan": guard let p = str(1), let k = int(2) else { return nil }; self = .orphan(p, k)
        case "unpin": guard let k = int(1) else { return nil }; self = .unpin(k)
        case "tmpfile": guard let k = int(1), let m = u32(2) else { return nil }; self = .tmpfile(k, m)
        case "linktmp": guard let k = int(1), let p = str(2) else { return nil }; self = .linkTmp(k, p)
        case "write": guard let p = str(1), let s = u64(2), let c = u64(3) else { return nil }; self = .write(p, s, c)
        case "snapshot": guard let a = str(1), let b = str(2), let r = int(3) else { return nil }; self = .snapshot(a, b, r)
        default: return nil
        }
    }
}

func hex(_ bytes: [UInt8]) -> String {
    if bytes.isEmpty { return "=" }
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
    return String(decoding: out, as: UTF8.self)
}

func unhex(_ s: String) -> [UInt8]? {
    if s == "=" { return [] }
    let u = Array(s.utf8)
    guard u.count % 2 == 0 else { return nil }
    func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }
    var out: [UInt8] = []
    var i = 0
    while i < u.count {
        guard let hi = nibble(u[i]), let lo = nibble(u[i + 1]) else { return nil }
        out.append(hi << 4 | lo)
        i += 2
    }
    return out
}


/// SystemPackage has a FileType too; this one is the engine's.
typealias FileType = PMFSMetadata.FileType
