import CFUSE

/// Unsolicited messages from the file system to the kernel (unique 0, the
/// notification code in the error field). pmfs sends them to a session's
/// kernel when another session changed something it may have cached.
public enum FUSENotification {
    /// Forget the dentry `name` in `parent` (and the inode's attributes).
    public static func invalidateEntry(parent: UInt64, name: [UInt8]) -> [UInt8] {
        var b = ReplyBuilder(unique: 0, error: -Int32(FUSE_NOTIFY_INVAL_ENTRY.rawValue), capacity: 16 + name.count + 1)
        b.append(fuse_notify_inval_entry_out(parent: parent, namelen: UInt32(name.count), flags: 0))
        b.append(contentsOf: name)
        b.append(UInt8(0))   // the kernel wants the name NUL-terminated
        return b.finish()
    }

    /// Forget an inode's attributes and, with `data`, its cached pages.
    public static func invalidateInode(_ ino: UInt64, data: Bool) -> [UInt8] {
        var b = ReplyBuilder(unique: 0, error: -Int32(FUSE_NOTIFY_INVAL_INODE.rawValue), capacity: 24)
        // off < 0: attributes only; off 0, len 0: attributes and every page.
        b.append(fuse_notify_inval_inode_out(ino: ino, off: data ? 0 : -1, len: 0))
        return b.finish()
    }
}
