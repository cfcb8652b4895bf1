import Glibc
import SystemPackage
import Testing
@testable import PMFSCore
@testable import PMFSMetadata

/// Offsets and lengths as a hostile guest may send them (near 2^63 and 2^64),
/// and a size read back from a damaged pool: errors, never a trap, and the
/// file system keeps working.
@Suite struct HostileOffsetTests {
    let huge: [UInt64] = [UInt64.max, UInt64.max - 1, 1 << 63, (1 << 63) - 1, MetadataStore.maxFileSize, MetadataStore.maxFileSize + 1]

    @Test func extremeOffsetsGiveErrorsAndTheFileStillWorks() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("f")
        let bytes = Array("hello".utf8)
        _ = try bytes.withUnsafeBytes { try t.fs.write(ino, offset: 0, from: $0) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        for offset in huge {
            #expect(try buffer.withUnsafeMutableBytes { try t.fs.read(ino, offset: offset, into: $0) } == 0)
            #expect(throws: Errno.fileTooLarge) { _ = try bytes.withUnsafeBytes { try t.fs.write(ino, offset: offset, from: $0) } }
            for length in [1, UInt64.max, 1 << 63] {
                #expect(throws: Errno.self) { try t.fs.fallocate(ino, mode: [], offset: offset, length: length) }
                #expect(throws: Errno.self) { try t.fs.fallocate(ino, mode: [.punchHole, .keepSize], offset: offset, length: length) }
                _ = try? t.fs.copyFileRange(from: ino, offset: offset, to: ino, offset: 0, length: length)
                _ = try? t.fs.copyFileRange(from: ino, offset: 0, to: ino, offset: offset, length: length)
            }
            #expect(throws: Errno.noSuchAddressOrDevice) { try t.fs.seek(ino, from: offset, to: .data) }
            if offset > MetadataStore.maxFileSize {
                #expect(throws: Errno.fileTooLarge) { _ = try t.fs.setattr(ino, AttributeChanges(size: offset)) }
            }
        }
        #expect(try buffer.withUnsafeMutableBytes { try t.fs.read(ino, offset: 0, into: $0) } == 5)
        #expect(Array(buffer[0..<5]) == bytes)
    }

    /// A size past the largest possible (pool damage) is EIO, not a trap in
    /// the read, seek or write arithmetic built on it.
    @Test func damagedSizeIsAnIOError() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("damaged")
        try t.restart()   // no cached state for the file
        try t.metadata.inodes.inode(ino).pointee.size = UInt64.max - 5
        var buffer = [UInt8](repeating: 0, count: 4096)
        #expect(throws: Errno.ioError) { _ = try buffer.withUnsafeMutableBytes { try t.fs.read(ino, offset: UInt64.max - 100, into: $0) } }
        #expect(throws: Errno.ioError) { try t.fs.seek(ino, from: 0, to: .hole) }
        let other = try t.newFile("fine")
        _ = try [UInt8]([1, 2, 3]).withUnsafeBytes { try t.fs.write(other, offset: 0, from: $0) }
        #expect(try buffer.withUnsafeMutableBytes { try t.fs.read(other, offset: 0, into: $0) } == 3)
    }
}
