import Glibc
import PMFSCheck
import PMFSData
import SystemPackage
import Testing
@testable import PMFSCore
@testable import PMFSMetadata

/// Clones through copy_file_range: shared blocks, copy-on-write, owners
/// dropped by unlink, truncate and punch, and fsck clean after each.
@Suite struct CloneTests {
    static let block = 4096

    func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ $0 / 4096) }
    }

    @Test func cloneReadsLikeTheSourceAndUsesNoNewBlocks() throws {
        let t = try CoreFixture()
        let src = try t.newFile("src"), dst = try t.newFile("dst")
        let data = pattern(3 << 20, seed: 1)
        #expect(try t.write(src, 0, data) == data.count)        // still dirty in the cache
        try t.fs.syncAll()
        let free0 = t.metadata.statistics().freeBlocks
        #expect(try t.fs.copyFileRange(from: src, offset: 0, to: dst, offset: 0, length: UInt64(data.count)) == UInt64(data.count))
        #expect(t.metadata.statistics().freeBlocks == free0)
        #expect(try t.read(dst, 0, data.count + 10) == data)
        #expect(try t.fs.getattr(dst).size == UInt64(data.count))
        let srcBlocks = try t.fs.getattr(src).blocks
        #expect(try t.fs.getattr(dst).blocks == srcBlocks)
        let records = try t.metadata.sharedBlockRecords()
        #expect(records.reduce(0) { $0 + $1.length } == UInt64(data.count / Self.block))
        #expect(records.allSatisfy { $0.owners == 2 })
        try expectClean(t)
        #expect(try t.metadata.sharedBlockRecords().map { $0.length } == records.map { $0.length })   // kept across reopen
        #expect(try t.read(dst, 0, data.count) == data)
    }

    @Test func cloneSeesDirtySourceData() throws {
        let t = try CoreFixture()
        let src = try t.newFile("src"), dst = try t.newFile("dst")
        let data = pattern(64 * Self.block, seed: 2)
        _ = try t.write(src, 0, data)
        #expect(try t.fs.copyFileRange(from: src, offset: 0, to: dst, offset: 0, length: UInt64(data.count)) == UInt64(data.count))
        #expect(try t.read(dst, 0, data.count) == data)
        try t.restart()
        #expect(try t.read(dst, 0, data.count) == data)
    }

    @Test func writesToEitherSideAreCopiedOnWrite() throws {
        let t = try CoreFixture()
        let src = try t.newFile("src"), dst = try t.newFile("dst")
        let data = pattern(32 * Self.block, seed: 3)
        _ = try t.write(src, 0, data)
        _ = try t.fs.copyFileRange(from: src, offset: 0, to: dst, offset: 0, length: UInt64(data.count))
        try t.fs.syncAll()
        let free0 = t.metadata.statistics().freeBlocks
        // A partial block of the clone and a whole block of the source.
        let patch = [UInt8](repeating: 0xAB, count: 100)
        _ = try t.write(dst, 5 * 4096 + 300, patch)
        let whole = [UInt8](repeating: 0xCD, count: Self.block)
        _ = try t.write(src, 9 * 4096, whole)
        try t.fs.syncAll()
        #expect(t.metadata.statistics().freeBlocks == free0 - 2)
        var wantDst = data, wantSrc = data
        wantDst.replaceSubrange((5 * 4096 + 300)..<(5 * 4096 + 400), with: patch)
        wantSrc.replaceSubrange((9 * 4096)..<(10 * 4096), with: whole)
        #expect(try t.read(dst, 0, data.count) == wantDst)
        #expect(try t.read(src, 0, data.count) == wantSrc)
        let records = try t.metadata.sharedBlockRecords()
        #expect(records.reduce(0) { $0 + $1.length } == 30)
        try expectClean(t)
        #expect(try t.read(dst, 0, data.count) == wantDst)
        #expect(try t.read(src, 0, data.count) == wantSrc)
        // A second write to the now private block stays in place.
        let free1 = t.metadata.statistics().freeBlocks
        _ = try t.write(dst, 5 * 4096, [1, 2, 3])
        try t.fs.syncAll()
        #expect(t.metadata.statistics().freeBlocks == free1)
    }

    @Test func unlinkingFreesBlocksOnlyWithTheLastOwner() throws {
        let t = try CoreFixture()
        let free0 = t.metadata.statistics().freeBlocks
        let src = try t.newFile("src"), dst = try t.newFile("dst")
        let data = pattern(40 * Self.block, seed: 4)
        _ = try t.write(src, 0, data)
        _ = try t.fs.copyFileRange(from: src, offset: 0, to: dst, offset: 0, length: UInt64(data.count))
        try t.fs.syncAll()
        #expect(t.metadata.statistics().freeBlocks == free0 - 40)
        try t.metadata.unlink(1, FileName("src"))
        #expect(t.metadata.statistics().freeBlocks == free0 - 40)
        #expect(try t.metadata.sharedBlockRecords().isEmpty)
        #expect(try t.read(dst, 0, data.count) == data)
        try expectClean(t)
        #expect(try t.read(dst, 0, data.count) == data)
        try t.metadata.unlink(1, FileName("dst"))
        #expect(t.metadata.statistics().freeBlocks == free0)
        try expectClean(t)
    }

    @Test func truncateAndPunchDropOwners() throws {
        let t = try CoreFixture()
        let free0 = t.metadata.statistics().freeBlocks
        let src = try t.newFile("src"), dst = try t.newFile("dst")
        let data = pattern(20 * Self.block, seed: 5)
        _ = try t.write(src, 0, data)
        _ = try t.fs.copyFileRange(from: src, offset: 0, to: dst, offset: 0, length: UInt64(data.count))
        // The clone loses its second half; the source a hole in the middle of the first.
        _ = try t.fs.setattr(dst, AttributeChanges(size: UInt64(10 * Self.block)))
        try t.fs.fallocate(src, mode: [.punchHole, .keepSize], offset: 2 * 4096, length: 3 * 4096)
        try t.fs.syncAll()
        #expect(t.metadata.statistics().freeBlocks == free0 - 20)   // every block still has an owner
        #expect(try t.metadata.sharedBlockRecords().reduce(0) { $0 + $1.length } == 7)
        var wantSrc = data
        wantSrc.replaceSubrange((2 * 4096)..<(5 * 4096), with: [UInt8](repeating: 0, count: 3 * 4096))
        #expect(try t.read(src, 0, data.count) == wantSrc)
        #expect(try t.read(dst, 0, data.count) == Array(data.prefix(10 * Self.block)))
        try expectClean(t)
        // Punching the clone's copy of the hole frees those blocks; truncating the source frees the rest.
        try t.fs.fallocate(dst, mode: [.punchHole, .keepSize], offset: 2 * 4096, length: 3 * 4096)
        try t.fs.syncAll()
        #expect(t.metadata.statistics().freeBlocks == free0 - 17)
        _ = try t.fs.setattr(src, AttributeChanges(size: 0))
        #expect(t.metadata.statistics().freeBlocks == free0 - 7)
        #expect(try t.metadata.sharedBlockRecords().isEmpty)
        _ = try t.fs.setattr(dst, AttributeChanges(size: 0))
        #expect(t.metadata.statistics().freeBlocks == free0)
        try expectClean(t)
    }

    @Test func partialLastBlockIsSharedAtEOFAndUnalignedRangesAreCopied() throws {
        let t = try CoreFixture()
        let src = try t.newFile("src"), dst = try t.newFile("dst"), odd = try t.newFile("odd")
        let data = pattern(5 * Self.block + 1234, seed: 6)
        _ = try t.write(src, 0, data)
        try t.fs.syncAll()
        let free0 = t.metadata.statistics().freeBlocks
        // copy_file_range past EOF stops at EOF; the partial last block is shared too.
        #expect(try t.fs.copyFileRange(from: src, offset: 0, to: dst, offset: 0, length: 1 << 20) == UInt64(data.count))
        #expect(t.metadata.statistics().freeBlocks == free0)
        #expect(try t.fs.getattr(dst).size == UInt64(data.count))
        #expect(try t.read(dst, 0, data.count + 100) == data)
        // Extending the clone past the shared partial block shows zeros, not old bytes.
        _ = try t.write(dst, UInt64(data.count + 100), [9])
        #expect(try t.read(dst, UInt64(data.count), 101) == [UInt8](repeating: 0, count: 100) + [9])
        #expect(try t.read(src, 0, data.count + 1) == data)
        // Unaligned offsets copy bytes.
        #expect(try t.fs.copyFileRange(from: src, offset: 100, to: odd, offset: 0, length: 3 * 4096) == 3 * 4096)
        #expect(try t.read(odd, 0, 3 * 4096) == Array(data[100..<(100 + 3 * 4096)]))
        // A clone into the middle of a file with its own data replaces it.
        let own = try t.newFile("own")
        _ = try t.write(own, 0, [UInt8](repeating: 0x77, count: 8 * Self.block))
        #expect(try t.fs.copyFileRange(from: src, offset: 4096, to: own, offset: 2 * 4096, length: 2 * 4096) == 2 * 4096)
        var want = [UInt8](repeating: 0x77, count: 8 * Self.block)
        want.replaceSubrange((2 * 4096)..<(4 * 4096), with: data[4096..<(3 * 4096)])
        #expect(try t.read(own, 0, want.count) == want)
        try expectClean(t)
        #expect(try t.read(own, 0, want.count) == want)
        #expect(try t.read(dst, 0, data.count) == data)
    }

    @Test func cloneWithinOneFile() throws {
        let t = try CoreFixture()
        let f = try t.newFile("f")
        let data = pattern(8 * Self.block, seed: 7)
        _ = try t.write(f, 0, data)
        #expect(try t.fs.copyFileRange(from: f, offset: 0, to: f, offset: 8 * 4096, length: 8 * 4096) == 8 * 4096)
        #expect(try t.read(f, 0, 16 * Self.block) == data + data)
        _ = try t.write(f, 0, [0xFF])
        #expect(try t.read(f, 8 * 4096, 1) == [data[0]])
        try expectClean(t)
        #expect(try t.read(f, 8 * 4096, 8 * Self.block) == data)
    }
}
