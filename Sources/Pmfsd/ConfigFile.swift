// pmfsd --config FILE: the daemon's settings in a YAML file. The values are
// read through apple/swift-configuration (its YAML snapshot: typed lookups by
// key); the same text is composed with Yams for what a key-value reader does
// not keep: which keys the file has (an unknown key is a typo, refused), the
// guests' names, and the line of each key for the messages.
import Configuration
import Glibc
import PMFSServer
import Yams

/// A problem in a configuration file: where (line, key path) and why.
struct ConfigFileError: Error, CustomStringConvertible {
    let file: String
    var line: Int?
    var column: Int?
    var key: String?
    let reason: String

    var description: String {
        var place = file
        if let line { place += ":\(line)" }
        if let column { place += ":\(column)" }
        return key.map { "\(place): \($0): \(reason)" } ?? "\(place): \(reason)"
    }
}

/// A value as the file gives it, of the kind its key takes.
enum ConfigValueKind: Equatable {
    case string, int, bool, strings

    var expected: String {
        switch self {
        case .string: "a string"
        case .int: "an integer"
        case .bool: "true or false"
        case .strings: "a list of strings"
        }
    }
}

enum ConfigScalar: Equatable {
    case string(String), int(Int), bool(Bool), strings([String])
}

/// One guest listener of the file: a name (for the messages), a socket path or
/// an inherited descriptor, and its options in the `--socket` syntax.
struct ConfiguredGuest: Equatable {
    let name: String
    let line: Int?
    let listener: ListenerTarget
    let spec: GuestListenerSpec
}

/// A guest socket's identity across reloads: the same path (or descriptor) is the same listener.
enum ListenerTarget: Hashable, CustomStringConvertible {
    case path(String)
    case descriptor(Int32)

    var listener: Listener {
        switch self {
        case .path(let p): .path(p)
        case .descriptor(let n): .descriptor(n)
        }
    }

    var description: String {
        switch self {
        case .path(let p): "socket \(p)"
        case .descriptor(let n): "fd \(n)"
        }
    }
}

/// What a configuration file says. Every setting is optional: a flag or the
/// default fills in what the file leaves out.
struct ConfigFile: Equatable {
    let path: String
    var values: [String: ConfigScalar] = [:]
    var guests: [ConfiguredGuest] = []
    /// The line of each key path (`queues`, `guests.vm1.export`).
    var lines: [String: Int] = [:]

    /// The daemon's settings: the names of pmfsd's long options.
    static let settingKeys: [String: ConfigValueKind] = [
        "pool": .string, "data": .string, "mount": .string, "fuse-transport": .string,
        "tag": .string, "queues": .int, "cache": .string, "locks": .string, "writeback": .bool,
        "poll-microseconds": .int, "socket-group": .string,
        "cache-size": .string, "io-engine": .string, "workers": .int, "write-through": .bool,
        "log-level": .string, "control": .string, "metrics": .string,
    ]

    /// A guest's keys: where it listens (one of socket, fd) and the export options of `--socket`.
    static let guestKeys: [String: ConfigValueKind] = [
        "socket": .string, "fd": .int, "export": .string, "read-only": .bool,
        "uid-map": .strings, "gid-map": .strings, "devices": .string, "setid": .string,
        "cache": .string, "locks": .string,
    ]

    /// A configuration file is a few kilobytes; anything much larger is a mistake.
    static let maxBytes = 1 << 20
    static let maxGuests = Guests.maxListeners

    func string(_ key: String) -> String? { if case .string(let s)? = values[key] { s } else { nil } }
    func int(_ key: String) -> Int? { if case .int(let n)? = values[key] { n } else { nil } }
    func bool(_ key: String) -> Bool? { if case .bool(let b)? = values[key] { b } else { nil } }

    /// An error at `key` (its line if the file has it).
    func error(_ key: String, _ reason: String) -> ConfigFileError {
        ConfigFileError(file: path, line: lines[key], key: key, reason: reason)
    }

    static func load(path: String) throws(ConfigFileError) -> ConfigFile {
        let bytes = try readAll(path)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigFileError(file: path, reason: "not UTF-8 text")
        }
        return try parse(text, bytes: bytes, path: path)
    }

    /// Parses the file's text (`bytes` is the same text, for the reader).
    static func parse(_ text: String, bytes: [UInt8]? = nil, path: String) throws(ConfigFileError) -> ConfigFile {
        var file = ConfigFile(path: path)
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch { throw syntaxError(error, path: path) }
        // An empty file (or only comments) sets nothing.
        guard let root, root.null == nil else { return file }
        guard let top = root.mapping else {
            throw ConfigFileError(file: path, line: root.mark?.line, reason: "the file must be a mapping of keys (pool:, data:, guests:, ...)")
        }
        let reader: ConfigReader
        do { reader = ConfigReader(provider: try YAMLTextProvider(bytes ?? Array(text.utf8), name: path)) } catch {
            throw ConfigFileError(file: path, line: root.mark?.line, reason: "\(error)")
        }
        for (keyNode, value) in top {
            let key = keyNode.string ?? ""
            file.lines[key] = keyNode.mark?.line
            if key == "guests" {
                file.guests = try readGuests(value, reader: reader, into: &file)
                continue
            }
            guard let kind = settingKeys[key] else {
                throw file.error(key, "unknown key (known: \(settingKeys.keys.sorted().joined(separator: ", ")), guests)")
            }
            file.values[key] = try file.readValue(ConfigKey([key]), key, kind, value, reader)
        }
        return file
    }

    /// `guests:` is a mapping of names to guest sections.
    private static func readGuests(_ node: Node, reader: ConfigReader, into file: inout ConfigFile) throws(ConfigFileError) -> [ConfiguredGuest] {
        if node.null != nil { return [] }
        guard let mapping = node.mapping else {
            throw file.error("guests", "a mapping of guest names to their socket (or fd) and export options")
        }
        guard mapping.count <= maxGuests else { throw file.error("guests", "more than \(maxGuests) guests") }
        var guests: [ConfiguredGuest] = []
        var seen: [ListenerTarget: String] = [:]
        for (nameNode, section) in mapping {
            let name = nameNode.string ?? ""
            let keyPath = "guests.\(name)"
            file.lines[keyPath] = nameNode.mark?.line
            guard !name.isEmpty, name.utf8.count <= 64, name.utf8.allSatisfy({ isNameByte($0) }) else {
                throw file.error(keyPath, "a guest's name is 1-64 letters, digits, '-' or '_'")
            }
            guard let keys = section.mapping else {
                throw file.error(keyPath, "a mapping with socket: PATH (or fd: N) and export options")
            }
            let guest = try readGuest(name, keys, reader: reader, into: &file)
            if let other = seen[guest.listener] {
                throw file.error(keyPath, "\(guest.listener) is guest \(other)'s too")
            }
            seen[guest.listener] = name
            guests.append(guest)
        }
        return guests
    }

    private static func readGuest(_ name: String, _ keys: Node.Mapping, reader: ConfigReader, into file: inout ConfigFile) throws(ConfigFileError) -> ConfiguredGuest {
        let prefix = "guests.\(name)"
        var target: ListenerTarget?
        var options: [(key: String, option: Substring)] = []
        for (keyNode, value) in keys {
            let key = keyNode.string ?? ""
            let keyPath = "\(prefix).\(key)"
            file.lines[keyPath] = keyNode.mark?.line
            guard let kind = guestKeys[key] else {
                throw file.error(keyPath, "unknown key (known: \(guestKeys.keys.sorted().joined(separator: ", ")))")
            }
            let read = try file.readValue(ConfigKey(["guests", name, key]), keyPath, kind, value, reader)
            switch (key, read) {
            case ("socket", .string(let path)):
                guard target == nil else { throw file.error(keyPath, "a guest listens on one socket or one fd, not both") }
                guard path.hasPrefix("/") else { throw file.error(keyPath, "an absolute path, like /run/pmfs/vm1.sock") }
                target = .path(path)
            case ("fd", .int(let n)):
                guard target == nil else { throw file.error(keyPath, "a guest listens on one socket or one fd, not both") }
                guard let fd = Int32(exactly: n), fd >= 3 else { throw file.error(keyPath, "a descriptor number of 3 or more (0-2 are standard input, output and error)") }
                target = .descriptor(fd)
            case ("read-only", .bool(let on)):
                if on { options.append((keyPath, "read-only")) }
            case (_, .strings(let list)):
                options += list.map { (keyPath, Substring("\(key)=\($0)")) }
            case (_, .string(let s)):
                options.append((keyPath, Substring("\(key)=\(s)")))
            default:
                throw file.error(keyPath, "expected \(kind.expected)")
            }
        }
        guard let target else { throw file.error(prefix, "no socket: PATH or fd: N") }
        let text: String
        switch target {
        case .path(let p): text = p
        case .descriptor(let n): text = String(n)
        }
        // Each option alone first, so a bad value is reported at its own line.
        for (keyPath, option) in options {
            do { _ = try GuestListenerSpec.parse(target: text, options: [option]) } catch { throw file.error(keyPath, error.description) }
        }
        do {
            let spec = try GuestListenerSpec.parse(target: text, options: options.map(\.option))
            return ConfiguredGuest(name: name, line: file.lines[prefix], listener: target, spec: spec)
        } catch { throw file.error(prefix, error.description) }
    }

    /// One value of `kind`, through the configuration reader (which checks its type).
    private func readValue(_ key: ConfigKey, _ keyPath: String, _ kind: ConfigValueKind, _ node: Node, _ reader: ConfigReader) throws(ConfigFileError) -> ConfigScalar {
        guard node.mapping == nil, node.null == nil else { throw error(keyPath, "expected \(kind.expected)") }
        do {
            switch kind {
            case .string:
                guard node.scalar != nil else { throw error(keyPath, "expected \(kind.expected)") }
                let s = try reader.requiredString(forKey: key)
                guard !s.isEmpty else { throw error(keyPath, "empty") }
                return .string(s)
            case .int:
                guard node.scalar != nil else { throw error(keyPath, "expected \(kind.expected)") }
                return .int(try reader.requiredInt(forKey: key))
            case .bool:
                guard node.scalar != nil else { throw error(keyPath, "expected \(kind.expected)") }
                return .bool(try reader.requiredBool(forKey: key))
            case .strings:
                // One value may stand for a list of one.
                if node.scalar != nil { return .strings([try reader.requiredString(forKey: key)]) }
                return .strings(try reader.requiredStringArray(forKey: key))
            }
        } catch let e as ConfigFileError {
            throw e
        } catch {
            throw self.error(keyPath, "expected \(kind.expected)")
        }
    }

    private static func isNameByte(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b == UInt8(ascii: "-") || b == UInt8(ascii: "_")
    }

    /// Yams's error, on one line: where the text stopped parsing and why.
    static func syntaxError(_ error: Error, path: String) -> ConfigFileError {
        guard let yaml = error as? YamlError else { return ConfigFileError(file: path, reason: "\(error)") }
        switch yaml {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _), .composer(let context, let problem, let mark, _):
            let why = [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: ": ")
            return ConfigFileError(file: path, line: mark.line, column: mark.column, reason: "YAML: \(why)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            return ConfigFileError(file: path, line: context.mark.line, reason: "key \(duplicates.map { "'\($0)'" }.joined(separator: ", ")) given twice")
        default:
            let first = "\(yaml)".split(separator: "\n").first.map(String.init) ?? "\(yaml)"
            return ConfigFileError(file: path, reason: "YAML: \(first)")
        }
    }

    /// The whole file, at most `maxBytes`.
    static func readAll(_ path: String) throws(ConfigFileError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ConfigFileError(file: path, reason: "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ConfigFileError(file: path, reason: "cannot read: \(String(cString: strerror(errno)))")
            }
            if n == 0 { return bytes }
            bytes += chunk.prefix(n)
            guard bytes.count <= maxBytes else { throw ConfigFileError(file: path, reason: "larger than \(maxBytes >> 10) KiB") }
        }
    }
}

/// swift-configuration's provider over YAML text already read (its FileProvider
/// reads the file itself, asynchronously; pmfsd reads it once, for Yams too).
struct YAMLTextProvider: ConfigProvider {
    let snapshotValue: YAMLSnapshot
    var providerName: String { snapshotValue.providerName }

    init(_ bytes: [UInt8], name: String) throws {
        snapshotValue = try bytes.withUnsafeBytes { raw in
            try YAMLSnapshot(data: RawSpan(_unsafeBytes: raw), providerName: name, parsingOptions: .default)
        }
    }

    func value(forKey key: AbsoluteConfigKey, type: ConfigType) throws -> LookupResult {
        try snapshotValue.value(forKey: key, type: type)
    }

    func fetchValue(forKey key: AbsoluteConfigKey, type: ConfigType) async throws -> LookupResult {
        try value(forKey: key, type: type)
    }

    func watchValue<Return: ~Copyable>(
        forKey key: AbsoluteConfigKey, type: ConfigType,
        updatesHandler: nonisolated(nonsending) (_ updates: ConfigUpdatesAsyncSequence<Result<LookupResult, any Error>, Never>) async throws -> Return
    ) async throws -> Return {
        try await watchValueFromValue(forKey: key, type: type, updatesHandler: updatesHandler)
    }

    func snapshot() -> any ConfigSnapshot { snapshotValue }

    func watchSnapshot<Return: ~Copyable>(
        updatesHandler: nonisolated(nonsending) (_ updates: ConfigUpdatesAsyncSequence<any ConfigSnapshot, Never>) async throws -> Return
    ) async throws -> Return {
        try await watchSnapshotFromSnapshot(updatesHandler: updatesHandler)
    }
}
