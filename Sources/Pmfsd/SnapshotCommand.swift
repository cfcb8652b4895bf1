// The control socket's snapshot command: a copy of a directory tree whose
// files share their blocks with the source's (PMFSCore's FileSystem.snapshot).
import Glibc
import PMFSConcurrency
import PMFSControl
import PMFSCore
import PMFSMetadata
import PMFSServer

struct SnapshotCommand {
    let fs: FileSystem
    /// Told of the new entry, so the host mount's kernel drops a cached "no such name".
    let sessions: SessionGroup
    /// pmfsd's host mount, under which absolute paths are accepted.
    let mount: String?

    func run(_ request: ControlRequest) throws -> SnapshotInfo {
        guard let source = request.source, let target = request.target else {
            throw ControlError("snapshot needs a source and a target")
        }
        let readOnly = request.readOnly ?? false
        let sourceIno = try directory(at: try components(source), path: source)
        var targetNames = try components(target)
        guard let name = targetNames.popLast() else { throw ControlError("snapshot target \(target) is the root") }
        let parent = try directory(at: targetNames, path: target)
        let started = monotonicNanoseconds()
        let made: SnapshotSummary
        do {
            made = try fs.snapshot(sourceIno, into: parent, name: name, readOnly: readOnly)
        } catch {
            throw ControlError("snapshot \(source) \(target): \(error)")
        }
        sessions.announce([.entry(parent: parent, name: name.bytes), .attributes(parent)])
        return SnapshotInfo(root: made.root, inodes: made.inodes, directories: made.directories, files: made.regularFiles,
                            sharedBlocks: made.sharedBlocks, readOnly: readOnly, milliseconds: milliseconds(since: started))
    }

    /// The names of a path relative to the file system's root, or absolute under
    /// the host mount. No "..": a path names what it says, nothing above it.
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
            guard part != ".." else { throw ControlError("\(path): '..' is not allowed in a snapshot path") }
            do { names.append(try FileName(String(part))) } catch { throw ControlError("\(path): bad name '\(part.prefix(64))'") }
        }
        return names
    }

    /// The directory `names` lead to from the root (symbolic links not followed).
    private func directory(at names: [FileName], path: String) throws -> UInt64 {
        var ino: UInt64 = 1   // the root directory
        for name in names {
            let a: InodeAttributes
            do { a = try fs.metadata.lookup(ino, name) } catch {
                throw ControlError("\(path): \(String(decoding: name.bytes, as: UTF8.self)): \(error)")
            }
            guard a.type == .directory else { throw ControlError("\(path): \(String(decoding: name.bytes, as: UTF8.self)) is not a directory") }
            ino = a.ino
        }
        return ino
    }
}

/// Milliseconds since `start` (a `monotonicNanoseconds()`), for the durations control commands report.
func milliseconds(since start: UInt64) -> Double { Double(nanosecondsSince(start)) / 1e6 }
