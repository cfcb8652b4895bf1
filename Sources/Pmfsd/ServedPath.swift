// Paths that control requests name (snapshot's source and target, stat's
// path), resolved by lookups in the metadata store: never through the host
// mount, where a lookup from inside pmfsd would be a FUSE request to itself.
import PMFSControl
import PMFSMetadata

struct ServedPath {
    let metadata: MetadataStore
    /// pmfsd's host mount, under which absolute paths are accepted.
    let mount: String?

    /// The names of a path relative to the file system's root, or absolute under
    /// the host mount. No "..": a path names what it says, nothing above it.
    /// Each name is checked as a FUSE request's is (at most 255 bytes, no NUL).
    func components(_ path: String) throws -> [FileName] {
        var relative = Substring(path)
        if path.hasPrefix("/") {
            let root = mount.map { $0.hasSuffix("/") && $0.count > 1 ? String($0.dropLast()) : $0 }
            guard let root, relative == root || relative.hasPrefix(root + "/") else {
                throw ControlError("\(path) is not under pmfsd's host mount \(mount ?? "(none)"): give an absolute path under it or a path relative to the file system's root")
            }
            relative = relative.dropFirst(root.count)
        }
        var names: [FileName] = []
        for part in relative.split(separator: "/") where part != "." {
            guard part != ".." else { throw ControlError("\(path): '..' is not allowed in a path given to pmfsd") }
            do { names.append(try FileName(String(part))) } catch {
                throw ControlError("\(path): bad name '\(part.prefix(64))\(part.utf8.count > 64 ? "..." : "")' (\(part.utf8.count) bytes): \(error)")
            }
        }
        return names
    }

    /// What `names` lead to from the root, every name but the last a directory
    /// (symbolic links not followed); the root itself for no names.
    func attributes(at names: [FileName], path: String) throws -> InodeAttributes {
        var current = try metadata.getattr(1)   // the root directory
        for (i, name) in names.enumerated() {
            do { current = try metadata.lookup(current.ino, name) } catch {
                throw ControlError("\(path): \(name): \(error)")
            }
            guard i == names.count - 1 || current.type == .directory else { throw ControlError("\(path): \(name) is not a directory") }
        }
        return current
    }

    /// The directory `names` lead to.
    func directory(at names: [FileName], path: String) throws -> UInt64 {
        let a = try attributes(at: names, path: path)
        guard a.type == .directory else { throw ControlError("\(path): \(names.last.map { "\($0)" } ?? "/") is not a directory") }
        return a.ino
    }
}
