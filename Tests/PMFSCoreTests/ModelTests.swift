import Glibc
import PMFSData
import SystemPackage
import Testing
@testable import PMFSCore
@testable import PMFSMetadata

/// fsx-style model tests: random operations on two files, each checked against
/// a byte-exact in-memory model. Seeds are fixed (set PMFS_MODEL_SEED to replay
/// one, PMFS_MODEL_OPS for longer runs); the seed and operation number are in
/// every failure message.
@Suite struct ModelTests {
    enum CacheMode: String, CaseIterable, Sendable { case writeBack, writeThrough, tiny }

    static let seeds: [UInt64] = {
        if let s = getenv("PMFS_MODEL_SEED").flatMap({ UInt64(String(cString: $0)) }) { return [s] }
        return [1, 2, 3]
    }()
    static let operations: Int = getenv("PMFS_MODEL_OPS").flatMap { Int(String(cString: $0)) } ?? 1500

    @Test(arguments: CacheMode.allCases, seeds)
    func randomOperationsMatchTheModel(mode: CacheMode, seed: UInt64) throws {
        var options = FileDataTier.Options()
        switch mode {
        case .writeBack: break
        case .writeThrough: options.writeBack = false
        case .tiny: options.cacheBytes = 8 * 4096
        }
        let t = try CoreFixture(dataBlocks: 8192, options: options)
        var rng = SplitMix64(seed: seed &* 0x1000_0001 &+ UInt64(mode.rawValue.count))
        let inos = [try t.newFile("a"), try t.newFile("b")]
        var model: [UInt64: [UInt8]] = [inos[0]: [], inos[1]: []]
        let maxSize = 3 << 20
        func where_(_ op: Int, _ what: String) -> Comment { "seed \(seed) mode \(mode) op \(op): \(what)" }

        for op in 0..<Self.operations {
            let ino = inos[Int.random(in: 0..<2, using: &rng)]
            var m = model[ino]!
            switch Int.random(in: 0..<100, using: &rng) {
            case 0..<35:   // write
                let offset = Int.random(in: 0..<maxSize, using: &rng)
                let length = Int.random(in: 1...(Bool.random(using: &rng) ? 300 : 70_000), using: &rng)
                let byte = UInt8.random(in: 1...255, using: &rng)
                let data = (0..<length).map { byte &+ UInt8(truncatingIfNeeded: $0) }
                #expect(try t.write(ino, UInt64(offset), data) == length, where_(op, "write"))
                if m.count < offset + length { m += [UInt8](repeating: 0, count: offset + length - m.count) }
                m.replaceSubrange(offset..<(offset + length), with: data)
            case 35..<55:  // read and compare a range
                let offset = Int.random(in: 0..<(maxSize + 10_000), using: &rng)
                let length = Int.random(in: 1...100_000, using: &rng)
                let got = try t.read(ino, UInt64(offset), length)
                let want = offset >= m.count ? [] : Array(m[offset..<min(m.count, offset + length)])
                #expect(got == want, where_(op, "read \(offset)+\(length)"))
            case 55..<63:  // truncate
                let size = Int.random(in: 0..<maxSize, using: &rng)
                _ = try t.fs.setattr(ino, AttributeChanges(size: UInt64(size)))
                if size < m.count { m.removeSubrange(size...) } else { m += [UInt8](repeating: 0, count: size - m.count) }
            case 63..<71:  // punch a hole (size kept)
                let offset = Int.random(in: 0..<maxSize, using: &rng)
                let length = Int.random(in: 1...200_000, using: &rng)
                try t.fs.fallocate(ino, mode: [.punchHole, .keepSize], offset: UInt64(offset), length: UInt64(length))
                if offset < m.count { for i in offset..<min(m.count, offset + length) { m[i] = 0 } }
            case 71..<77:  // zero a range (may grow)
                let offset = Int.random(in: 0..<maxSize, using: &rng)
                let length = Int.random(in: 1...200_000, using: &rng)
                let keep = Bool.random(using: &rng)
                try t.fs.fallocate(ino, mode: keep ? [.zeroRange, .keepSize] : .zeroRange, offset: UInt64(offset), length: UInt64(length))
                if !keep && m.count < offset + length { m += [UInt8](repeating: 0, count: offset + length - m.count) }
                if offset < m.count { for i in offset..<min(m.count, offset + length) { m[i] = 0 } }
            case 77..<83:  // preallocate (may grow)
                let offset = Int.random(in: 0..<maxSize, using: &rng)
                let length = Int.random(in: 1...200_000, using: &rng)
                let keep = Bool.random(using: &rng)
                try t.fs.fallocate(ino, mode: keep ? .keepSize : [], offset: UInt64(offset), length: UInt64(length))
                if !keep && m.count < offset + length { m += [UInt8](repeating: 0, count: offset + length - m.count) }
            case 83..<90:  // copy_file_range from the other file
                let other = ino == inos[0] ? inos[1] : inos[0]
                let src = model[other]!
                guard !src.isEmpty else { break }
                let from = Int.random(in: 0..<src.count, using: &rng)
                let length = Int.random(in: 1...100_000, using: &rng)
                let to = Int.random(in: 0..<maxSize, using: &rng)
                let n = try t.fs.copyFileRange(from: other, offset: UInt64(from), to: ino, offset: UInt64(to), length: UInt64(length))
                let copied = Array(src[from..<min(src.count, from + length)])
                #expect(Int(n) == copied.count, where_(op, "copy_file_range count"))
                if m.count < to + copied.count { m += [UInt8](repeating: 0, count: to + copied.count - m.count) }
                m.replaceSubrange(to..<(to + copied.count), with: copied)
            case 90..<95:  // fsync / fdatasync
                try t.fs.fsync(ino, dataOnly: Bool.random(using: &rng))
            case 95..<97:  // seek: the answer must be consistent with the model's bytes
                guard !m.isEmpty else { break }
                let offset = Int.random(in: 0..<m.count, using: &rng)
                do {
                    let data = try t.fs.seek(ino, from: UInt64(offset), to: .data)
                    #expect(m[offset..<Int(data)].allSatisfy { $0 == 0 }, where_(op, "SEEK_DATA skipped data"))
                    let hole = try t.fs.seek(ino, from: UInt64(offset), to: .hole)
                    #expect(hole <= UInt64(m.count) && hole >= UInt64(offset), where_(op, "SEEK_HOLE past EOF"))
                } catch Errno.noSuchAddressOrDevice {
                    // No data after offset: only a run of zeros to the end may say so.
                    #expect(m[offset...].allSatisfy { $0 == 0 }, where_(op, "SEEK_DATA said ENXIO before data"))
                }
            case 97..<99:  // clean restart
                try t.restart()
            default:       // size check
                #expect(try t.fs.getattr(ino).size == UInt64(m.count), where_(op, "size"))
            }
            model[ino] = m
        }
        // Everything, byte for byte, before and after a restart; then fsck-level space accounting.
        for ino in inos { #expect(try t.read(ino, 0, model[ino]!.count + 10) == model[ino]!, "seed \(seed) mode \(mode): final contents") }
        try t.restart()
        for ino in inos {
            #expect(try t.read(ino, 0, model[ino]!.count + 10) == model[ino]!, "seed \(seed) mode \(mode): contents after restart")
            #expect(try t.metadata.getattr(ino).size == UInt64(model[ino]!.count))
        }
        var used: UInt64 = 0
        for ino in inos {
            let attrs = try t.metadata.getattr(ino)
            let mapped = try t.metadata.mapBlocks(ino, start: 0, count: UInt64(maxSize / 4096 + 200)).filter { $0.deviceBlock != nil }.reduce(0) { $0 + $1.length }
            #expect(attrs.blocks == mapped * 8)
            used += mapped
        }
        let stats = t.metadata.statistics()
        #expect(stats.totalBlocks - stats.freeBlocks == used, "seed \(seed) mode \(mode): blocks leaked or double counted")
    }
}
