import FUSEProtocol

/// Operations that answer everything with a fixed result, so the decoder and
/// encoder are exercised on their own.
final class StubOperations: FUSEOperations, @unchecked Sendable {
    let attrs = FUSEAttributes(ino: 2, size: 0, blocks: 0, atime: (0, 0), mtime: (0, 0), ctime: (0, 0), mode: 0o100644,
                               nlink: 1, uid: 0, gid: 0, rdev: 0, blockSize: 4096)
    var entry: FUSEEntry { FUSEEntry(nodeid: 2, generation: 1, attributes: attrs, entryTimeout: 1, attributeTimeout: 1) }
    func initialize(capabilities: UInt64) -> UInt64 { capabilities }
    func destroy() {}
    func lookup(_ r: FUSERequest, parent: UInt64, name: UnsafeRawBufferPointer) throws -> FUSEEntry { entry }
    func forget(nodeid: UInt64, count: UInt64) {}
    func getattr(_ r: FUSERequest, nodeid: UInt64, handle: UInt64?) throws -> (FUSEAttributes, Double) { onGetattr?(); return (attrs, 1) }
    func setattr(_ r: FUSERequest, nodeid: UInt64, _ changes: FUSESetattr) throws -> (FUSEAttributes, Double) { (attrs, 1) }
    func readlink(_ r: FUSERequest, nodeid: UInt64) throws -> [UInt8] { [0x61] }
    func symlink(_ r: FUSERequest, parent: UInt64, name: [UInt8], target: [UInt8]) throws -> FUSEEntry { entry }
    func mknod(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, rdev: UInt32, umask: UInt32) throws -> FUSEEntry { entry }
    func mkdir(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, umask: UInt32) throws -> FUSEEntry { entry }
    func unlink(_ r: FUSERequest, parent: UInt64, name: [UInt8]) throws {}
    func rmdir(_ r: FUSERequest, parent: UInt64, name: [UInt8]) throws {}
    func rename(_ r: FUSERequest, parent: UInt64, name: [UInt8], newParent: UInt64, newName: [UInt8], flags: UInt32) throws {}
    func link(_ r: FUSERequest, nodeid: UInt64, newParent: UInt64, newName: [UInt8]) throws -> FUSEEntry { entry }
    func open(_ r: FUSERequest, nodeid: UInt64, flags: UInt32, killSuidGid: Bool) throws -> FUSEOpenResult { FUSEOpenResult(handle: 1) }
    func create(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, flags: UInt32, umask: UInt32) throws -> (FUSEEntry, FUSEOpenResult) { (entry, FUSEOpenResult(handle: 1)) }
    func tmpfile(_ r: FUSERequest, parent: UInt64, mode: UInt32, flags: UInt32, umask: UInt32) throws -> (FUSEEntry, FUSEOpenResult) { (entry, FUSEOpenResult(handle: 1)) }
    func read(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, into: UnsafeMutableRawBufferPointer) throws -> Int { min(into.count, 10) }
    func write(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer, flags: UInt32) throws -> Int { data.count }
    func flush(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, lockOwner: UInt64) throws {}
    func release(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, flags: UInt32, releaseFlags: UInt32, lockOwner: UInt64) throws {}
    /// Called by FSYNC and GETATTR (tests of where requests run).
    var onFsync: (@Sendable () -> Void)?
    var onGetattr: (@Sendable () -> Void)?
    func fsync(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, dataOnly: Bool) throws { onFsync?() }
    /// Called with the size of each group of FSYNCs committed together.
    var onFsyncGroup: (@Sendable (Int) -> Void)?
    func fsync(group: [FUSEFsync], errors: inout [Int32]) {
        onFsyncGroup?(group.count)
        for i in group.indices { onFsync?(); errors[i] = 0 }
    }
    func opendir(_ r: FUSERequest, nodeid: UInt64, flags: UInt32) throws -> FUSEOpenResult { FUSEOpenResult(handle: 1) }
    func readdir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, limit: Int) throws -> [FUSEDirectoryEntry] {
        offset > 3 ? [] : [FUSEDirectoryEntry(ino: 2, nextOffset: offset + 1, type: 8, name: Array("name".utf8))]
    }
    func readdirplusEntry(_ r: FUSERequest, parent: UInt64, entry e: FUSEDirectoryEntry) throws -> FUSEEntry? { entry }
    func releasedir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64) throws {}
    func fsyncdir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, dataOnly: Bool) throws {}
    func statfs(_ r: FUSERequest, nodeid: UInt64) throws -> FUSEStatistics {
        FUSEStatistics(blocks: 1, freeBlocks: 1, availableBlocks: 1, files: 1, freeFiles: 1, blockSize: 4096, nameLength: 255, fragmentSize: 4096)
    }
    func setxattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8], value: UnsafeRawBufferPointer, flags: UInt32) throws {}
    func getxattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8]) throws -> [UInt8] { [1, 2, 3] }
    func listxattr(_ r: FUSERequest, nodeid: UInt64) throws -> [[UInt8]] { [Array("user.a".utf8)] }
    func removexattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8]) throws {}
    func access(_ r: FUSERequest, nodeid: UInt64, mask: UInt32) throws {}
    func getlk(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, owner: UInt64, lock: FUSELock, flock: Bool) throws -> FUSELock { lock }
    func setlk(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, owner: UInt64, lock: FUSELock, flock: Bool, wait: Bool,
               reply: @escaping @Sendable (Int32) -> Void) { reply(0) }
    func interrupt(unique: UInt64) {}
    func fallocate(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, length: UInt64, mode: UInt32) throws {}
    func lseek(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, whence: UInt32) throws -> UInt64 { offset }
    func copyFileRange(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, toNode: UInt64, toHandle: UInt64,
                       toOffset: UInt64, length: UInt64, flags: UInt64) throws -> UInt64 { length }
    func syncfs(_ r: FUSERequest) throws {}
}
