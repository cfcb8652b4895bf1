// The control socket's snapshot command: a copy of a directory tree whose
// files share their blocks with the source's (PMFSCore's FileDataTier.snapshot).
import Glibc
import PMFSConcurrency
import PMFSControl
import PMFSCore
import PMFSMetadata
import PMFSServer

struct SnapshotCommand {
    let fs: FileDataTier
    /// Told of the new entry, so the host mount's kernel drops a cached "no such name".
    let sessions: SessionGroup
    /// pmfsd's host mount, under which absolute paths are accepted.
    let mount: String?

    func run(_ request: ControlRequest) throws -> SnapshotInfo {
        guard let source = request.source, let target = request.target else {
            throw ControlError("snapshot needs a source and a target")
        }
        let readOnly = request.readOnly ?? false
        let paths = ServedPath(metadata: fs.metadata, mount: mount)
        let sourceIno = try paths.directory(at: try paths.components(source), path: source)
        var targetNames = try paths.components(target)
        guard let name = targetNames.popLast() else { throw ControlError("snapshot target \(target) is the root") }
        let parent = try paths.directory(at: targetNames, path: target)
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
}

/// Milliseconds since `start` (a `monotonicNanoseconds()`), for the durations control commands report.
func milliseconds(since start: UInt64) -> Double { Double(nanosecondsSince(start)) / 1e6 }
