import FUSEDevice
import Glibc
import Logging

/// A FUSE mount whose daemon was killed stays in the mount table and answers
/// every access with ENOTCONN ("Transport endpoint is not connected"; ECONNABORTED
/// when it was served over io_uring, whose teardown aborts the connection): a
/// pmfsd killed with SIGKILL leaves one at its mount point. Detaching it
/// (as `umount -l` does) lets this start mount there again.
enum DeadMount {
    static func detach(at path: String, logger: Logger) {
        var st = stat()
        guard stat(path, &st) != 0, errno == ENOTCONN || errno == ECONNABORTED, FUSEMount.mountType(at: path)?.hasPrefix("fuse") == true else { return }
        if umount2(path, Int32(MNT_DETACH)) == 0 {
            logger.notice("\(path): a FUSE mount whose daemon is gone was left here (a killed pmfsd?); detached it")
        } else {
            logger.error("\(path): a dead FUSE mount is in the way and cannot be detached: \(String(cString: strerror(errno)))")
        }
    }
}
