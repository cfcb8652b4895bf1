import Glibc
import Logging

/// A FUSE mount whose daemon was killed stays in the mount table and answers
/// every access with ENOTCONN ("Transport endpoint is not connected"): a
/// pmfsd killed with SIGKILL leaves one at its mount point. Detaching it
/// (as `umount -l` does) lets this start mount there again.
enum DeadMount {
    static func detach(at path: String, logger: Logger) {
        var st = stat()
        guard stat(path, &st) != 0, errno == ENOTCONN, isFUSEMount(path) else { return }
        if umount2(path, Int32(MNT_DETACH)) == 0 {
            logger.notice("\(path): a FUSE mount whose daemon is gone was left here (a killed pmfsd?); detached it")
        } else {
            logger.error("\(path): a dead FUSE mount is in the way and cannot be detached: \(String(cString: strerror(errno)))")
        }
    }

    /// Whether /proc/self/mountinfo has a FUSE mount at `path` (mount points
    /// there have spaces and backslashes escaped as \ooo).
    static func isFUSEMount(_ path: String) -> Bool {
        guard let f = fopen("/proc/self/mountinfo", "r") else { return false }
        defer { fclose(f) }
        var line: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, f) > 0, let line {
            let fields = String(cString: line).split(separator: " ")
            guard fields.count > 4, let dash = fields.firstIndex(of: "-"), dash + 1 < fields.count else { continue }
            if unescape(fields[4]) == path && fields[dash + 1].hasPrefix("fuse") { return true }
        }
        return false
    }

    static func unescape(_ field: Substring) -> String {
        var bytes: [UInt8] = []
        var i = field.utf8.startIndex
        let u = field.utf8
        while i < u.endIndex {
            let digits = u[i...].dropFirst().prefix(3)
            if u[i] == UInt8(ascii: "\\"), digits.count == 3, let v = UInt8(String(decoding: digits, as: UTF8.self), radix: 8) {
                bytes.append(v)
                i = u.index(i, offsetBy: 4)
            } else {
                bytes.append(u[i])
                i = u.index(after: i)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
