import CPMDK
import Glibc
import PMFSData
import SystemPackage
import Testing
@testable import PMFSCore
@testable import PMFSMetadata

/// Extent maps damaged in the pool (as a bad bit, a torn write or a bug would
/// leave them): the file they belong to answers EIO, no transfer goes outside
/// the data area of the device (not to its header in block 0, not past its
/// end), no walk runs away, and every other file keeps working.
@Suite struct PoolDamageTests {
    /// A fixture with two written files, restarted so nothing is cached.
    static func twoFiles(blocks: Int = 3) throws -> (CoreFixture, damaged: UInt64, other: UInt64) {
        let t = try CoreFixture(dataBlocks: 4096)
        let damaged = try t.newFile("damaged"), other = try t.newFile("other")
        _ = try t.write(damaged, 0, [UInt8](repeating: 0xAA, count: blocks * 4096), sync: .data)
        _ = try t.write(other, 0, Array("still here".utf8), sync: .data)
        try t.restart()
        return (t, damaged, other)
    }

    static func root(_ t: CoreFixture, _ ino: UInt64) throws -> UnsafeMutablePointer<pmfs_extent_node> {
        try t.metadata.pool.pointer(t.metadata.inodes.inode(ino).pointee.content_off)
    }

    static func firstExtent(_ t: CoreFixture, _ ino: UInt64) throws -> UnsafeMutablePointer<pmfs_extent> {
        element(try root(t, ino), \.u, 0, as: pmfs_extent.self)
    }

    /// The file system still serves: the other file reads back, a new one is made.
    static func stillServes(_ t: CoreFixture, _ other: UInt64) throws {
        #expect(try t.read(other, 0, 100) == Array("still here".utf8))
        let fresh = try t.newFile("fresh-\(UInt32.random(in: 0...UInt32.max))")
        _ = try t.write(fresh, 0, [1, 2, 3], sync: .data)
        #expect(try t.read(fresh, 0, 10) == [1, 2, 3])
    }

    @Test func extentOutsideTheDataAreaIsEIOAndNothingIsWrittenThere() throws {
        let (t, damaged, other) = try Self.twoFiles()
        let header = try #require(try DataDeviceHeader.read(from: t.dataPath))
        let blockCount = UInt64(4096)
        // Block 0 (the device header), the last blocks running off the end,
        // past the end, values whose byte offset overflows, and blocks the
        // space map has free (a later allocation would hand them out again).
        for (device, length) in [(UInt64(0), UInt32(3)), (blockCount - 1, 3), (blockCount, 1), (UInt64.max - 1, 3), (1 << 63, 3), (100, UInt32.max), (2000, 3)] {
            let e = try Self.firstExtent(t, damaged)
            e.pointee.device_block = device
            e.pointee.length = length
            #expect(throws: Errno.ioError) { _ = try t.read(damaged, 0, 4096) }
            #expect(throws: (any Error).self) { _ = try t.write(damaged, 0, [UInt8](repeating: 0x55, count: 4096), sync: .data) }
            #expect(throws: (any Error).self) { _ = try t.write(damaged, 100, [1], sync: .data) }
            #expect(throws: (any Error).self) { try t.fs.fallocate(damaged, mode: [.punchHole, .keepSize], offset: 0, length: 4096) }
        }
        #expect(try DataDeviceHeader.read(from: t.dataPath) == header)
        try Self.stillServes(t, other)
        #expect(throws: (any Error).self) { try t.metadata.unlink(1, FileName("damaged")) }
    }

    @Test func extentPastTheLargestFileIsEIO() throws {
        let (t, damaged, other) = try Self.twoFiles()
        let node = try Self.root(t, damaged)
        // A key whose end (key + length) wraps, and a zero length.
        for (key, length) in [(UInt64.max, UInt32(3)), (UInt64.max - 1, UInt32.max), (MetadataStore.maxFileSize / 4096, 1), (0, 0)] {
            element(node, \.keys, 0, as: UInt64.self).pointee = key
            try Self.firstExtent(t, damaged).pointee.length = length
            #expect(throws: (any Error).self) { _ = try t.fs.seek(damaged, from: 0, to: .data) }
            #expect(throws: (any Error).self) { _ = try t.write(damaged, 0, [1], sync: .data) }
            _ = try? t.read(damaged, 0, 4096)
        }
        try Self.stillServes(t, other)
    }

    @Test func extentNodeWithTooManyKeysIsEIO() throws {
        let (t, damaged, other) = try Self.twoFiles()
        let node = try Self.root(t, damaged)
        // 30 keys fit the node for reading, but an insert would write past it.
        for count in [UInt32(PMFS_EXTENT_FANOUT), 31, UInt32.max] {
            node.pointee.key_count = count
            #expect(throws: Errno.ioError) { _ = try t.read(damaged, 0, 4096) }
            #expect(throws: (any Error).self) { _ = try t.write(damaged, 10 * 4096, [1], sync: .data) }
        }
        try Self.stillServes(t, other)
    }

    /// Every child of the root pointing back at the root: a search without a
    /// budget would try 31^64 paths under the inode's lock.
    @Test func cyclicAndSharedExtentSubtreesAreBounded() throws {
        let t = try CoreFixture(dataBlocks: 4096)
        let damaged = try t.newFile("fragmented"), other = try t.newFile("other")
        for i in 0..<70 { _ = try t.write(damaged, UInt64(i) * 2 * 4096, [UInt8(i)], sync: .none) }
        try t.fs.fsync(damaged)
        _ = try t.write(other, 0, Array("still here".utf8), sync: .data)
        try t.restart()
        let rootOffset = try t.metadata.inodes.inode(damaged).pointee.content_off
        let root = try Self.root(t, damaged)
        try #require(root.pointee.is_leaf == 0)
        let count = Int(root.pointee.key_count)
        let firstChild = element(root, \.u, 0, as: UInt64.self).pointee
        for target in [rootOffset, firstChild] {
            for i in 0...count { element(root, \.u, i, as: UInt64.self).pointee = target }
            let start = Timestamp.now()
            _ = try? t.read(damaged, 139 * 4096, 4096)
            _ = try? t.fs.seek(damaged, from: 3 * 4096, to: .data)
            _ = try? t.write(damaged, 141 * 4096, [1], sync: .data)
            #expect(throws: (any Error).self) { try t.metadata.unlink(1, FileName("fragmented")) }
            #expect(Timestamp.now().seconds - start.seconds < 5)
        }
        try Self.stillServes(t, other)
    }

    @Test func dataDeviceRefusesTransfersOutsideItsDataArea() throws {
        let t = try CoreFixture(dataBlocks: 64)
        let header = try #require(try DataDeviceHeader.read(from: t.dataPath))
        let buffer = AlignedBuffer(count: 4096)
        memset(buffer.pointer, 0x66, 4096)
        let size = t.device.size
        for offset in [UInt64(0), 4095, size - 4095, size, UInt64.max - 4095, 1 << 63] {
            #expect(throws: DataDeviceError.self) {
                try t.device.perform([BlockIORequest(kind: .write, buffer: buffer.pointer, length: 4096, offset: offset)])
            }
            #expect(throws: DataDeviceError.self) { try t.device.writeDurably([BlockIORequest(kind: .write, buffer: buffer.pointer, length: 4096, offset: offset)]) }
        }
        try t.device.perform([BlockIORequest(kind: .write, buffer: buffer.pointer, length: 4096, offset: 4096)])
        #expect(try DataDeviceHeader.read(from: t.dataPath) == header)
    }

    @Test func damageIsReportedNamingTheInodeAndFsck() throws {
        let (t, damaged, _) = try Self.twoFiles()
        try Self.firstExtent(t, damaged).pointee.device_block = 0
        do {
            _ = try t.metadata.mapBlocks(damaged, start: 0, count: 1)
            Issue.record("damage not seen")
        } catch let e as PoolError {
            #expect(e == .damagedInode(damaged, "extent at file block 0 maps device blocks 0+3, outside the data area 1..<4096"))
            #expect("\(e)".contains("inode \(damaged)") && "\(e)".contains("fsck.pmfs"))
        }
    }
}
