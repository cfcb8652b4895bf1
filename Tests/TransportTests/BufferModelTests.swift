import CFUSE
import Testing
@testable import FUSEProtocol

/// RequestCursor and ReplyWriter: reads and writes across segment boundaries,
/// zero-length segments, and lengths a peer made up (short, negative, huge)
/// that must throw, never trap or reach past the memory.
@Suite struct BufferModelTests {
    /// `bytes` cut at `cuts` (offsets, may repeat for empty pieces), as segments.
    func withSegments<R>(_ bytes: [UInt8], cuts: [Int], _ body: ([UnsafeRawBufferPointer]) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes { all in
            var pieces: [UnsafeRawBufferPointer] = []
            var start = 0
            for c in cuts + [bytes.count] {
                pieces.append(UnsafeRawBufferPointer(rebasing: all[start..<c]))
                start = c
            }
            return try body(pieces)
        }
    }

    @Test func aHeaderSplitAcrossSegmentsReadsWhole() throws {
        var h = fuse_in_header()
        h.len = 40; h.opcode = FUSE_GETATTR.rawValue; h.unique = 0x1122_3344_5566_7788; h.nodeid = 9
        let bytes = withUnsafeBytes(of: h) { Array($0) }
        for cuts in [[], [1], [7, 7, 7], [0, 20, 39], [39, 39]] {
            try withSegments(bytes, cuts: cuts) { segments throws in
                var c = RequestCursor(segments)
                let got = try c.read(fuse_in_header.self)
                #expect(got.unique == h.unique && got.nodeid == 9 && got.opcode == h.opcode, "cuts \(cuts)")
                #expect(c.remaining == 0)
            }
        }
    }

    @Test func shortInputThrowsAndConsumesNothing() throws {
        try withSegments([1, 2, 3, 4, 5], cuts: [2, 2]) { segments throws in
            var c = RequestCursor(segments)
            #expect(throws: FUSEWireError.self) { try c.read(UInt64.self) }
            #expect(c.position == 0)
            #expect(try c.read(UInt32.self) == 0x0403_0201)
            #expect(throws: FUSEWireError.self) { try c.read(UInt16.self) }
            #expect(try c.read(UInt8.self) == 5)
            #expect(throws: FUSEWireError.self) { try c.read(UInt8.self) }
        }
    }

    @Test func madeUpLengthsThrow() throws {
        try withSegments(Array(repeating: 7, count: 16), cuts: [8]) { segments throws in
            var c = RequestCursor(segments)
            for n in [-1, Int.min, Int.max, 17] {
                #expect(throws: FUSEWireError.self) { try c.skip(n) }
                #expect(throws: FUSEWireError.self) { try c.segments(n) }
                #expect(throws: FUSEWireError.self) { try c.prefix(n) }
            }
            #expect(throws: FUSEWireError.self) { try c.readPadded(UInt64.self, minimum: -1) }
            #expect(c.position == 0)
        }
    }

    @Test func aPaddedStructReadsMissingBytesAsZero() throws {
        try withSegments([1, 2, 3], cuts: [1]) { segments throws in
            var c = RequestCursor(segments)
            #expect(try c.readPadded(UInt64.self, minimum: 2) == 0x03_02_01)
            #expect(c.remaining == 0)
        }
        try withSegments([1], cuts: []) { segments throws in
            var c = RequestCursor(segments)
            #expect(throws: FUSEWireError.self) { try c.readPadded(UInt64.self, minimum: 2) }
        }
    }

    @Test func namesCrossSegmentsAndNeedTheirNUL() throws {
        let bytes: [UInt8] = Array("abc".utf8) + [0] + Array("de".utf8) + [0] + Array("xyz".utf8)
        try withSegments(bytes, cuts: [1, 1, 3, 4, 5, 5, 9]) { segments throws in
            var c = RequestCursor(segments)
            #expect(try c.readName() == Array("abc".utf8))
            #expect(try c.readName() == Array("de".utf8))
            let before = c.position
            #expect(throws: FUSEWireError.self) { try c.readName() }
            #expect(c.position == before)
            #expect(c.remaining == 3)
        }
        try withSegments([0], cuts: [0]) { segments throws in
            var c = RequestCursor(segments)
            #expect(try c.readName() == [])
        }
    }

    @Test func payloadSegmentsPointIntoTheRequest() throws {
        let bytes = Array(UInt8(0)..<20)
        try withSegments(bytes, cuts: [4, 4, 10]) { segments throws in
            var c = RequestCursor(segments)
            try c.skip(3)
            let data = try c.segments(12)
            #expect(data.map(\.count) == [1, 6, 5])
            #expect(data.flatMap { Array($0) } == Array(UInt8(3)..<15))
            #expect(data[1].baseAddress == segments[2].baseAddress)
            #expect(try c.read(UInt8.self) == 15)
            let rest = try c.prefix(2)
            #expect(rest.total == 2)
            #expect(c.remaining == 4)
        }
    }

    @Test func emptyAndOnlyEmptySegments() throws {
        var c = RequestCursor([])
        #expect(c.total == 0)
        #expect(try c.segments(0).isEmpty)
        #expect(throws: FUSEWireError.self) { try c.read(UInt8.self) }
        #expect(throws: FUSEWireError.self) { try c.readName() }
        try withSegments([], cuts: [0, 0, 0]) { segments throws in
            var d = RequestCursor(segments)
            #expect(throws: FUSEWireError.self) { try d.read(UInt8.self) }
            try d.skip(0)
        }
    }

    /// Writable memory cut into pieces of the given sizes, filled with 0xEE.
    func withWritable<R>(_ sizes: [Int], _ body: ([UnsafeMutableRawBufferPointer]) throws -> R) rethrows -> R {
        let total = sizes.reduce(0, +)
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: total + 8, alignment: 8)
        defer { memory.deallocate() }
        memory.initializeMemory(as: UInt8.self, repeating: 0xEE)
        var pieces: [UnsafeMutableRawBufferPointer] = []
        var start = 0
        for s in sizes {
            pieces.append(UnsafeMutableRawBufferPointer(rebasing: memory[start..<(start + s)]))
            start += s
        }
        let result = try body(pieces)
        #expect(memory[total..<(total + 8)].allSatisfy { $0 == 0xEE }, "wrote past the segments")
        return result
    }

    @Test func aWriterFillsAcrossSegmentsAndStopsAtTheEnd() throws {
        try withWritable([3, 0, 5, 0, 8]) { segments throws in
            var w = ReplyWriter(segments)
            #expect(w.capacity == 16)
            try w.write(UInt32(0x0403_0201))
            try [UInt8(5), 6, 7].withUnsafeBytes { try w.write(bytes: $0) }
            try w.write(zeros: 2)
            #expect(w.written == 9)
            #expect(throws: FUSEWireError.self) { try w.write(UInt64.max) }
            #expect(w.written == 9)
            try Array(repeating: UInt8(9), count: 7).withUnsafeBytes { try w.write(bytes: $0) }
            #expect(w.remaining == 0)
            #expect(throws: FUSEWireError.self) { try w.write(UInt8(1)) }
            #expect(throws: FUSEWireError.self) { try w.write(zeros: -1) }
            #expect(w.bytes == [1, 2, 3, 4, 5, 6, 7, 0, 0] + Array(repeating: 9, count: 7))
        }
    }

    @Test func patchRewritesOnlyWrittenBytes() throws {
        try withWritable([2, 2, 12]) { segments throws in
            var w = ReplyWriter(segments)
            try w.write(zeros: 8)
            try w.patch(UInt32(0xAABB_CCDD), at: 1)
            #expect(w.bytes == [0, 0xDD, 0xCC, 0xBB, 0xAA, 0, 0, 0])
            #expect(throws: FUSEWireError.self) { try w.patch(UInt64(1), at: 4) }
            #expect(throws: FUSEWireError.self) { try w.patch(UInt8(1), at: -1) }
            #expect(throws: FUSEWireError.self) { try w.patch(UInt8(1), at: Int.max) }
        }
    }

    @Test func fillHandsOutTheReplyMemoryItself() throws {
        try withWritable([16, 0, 4, 100]) { segments throws in
            var w = ReplyWriter(segments)
            try w.write(zeros: 16)
            var seen: [Int] = []
            let n = try w.fill(upTo: 50) { pieces in
                seen = pieces.map(\.count)
                #expect(pieces[0].baseAddress == segments[2].baseAddress)
                for p in pieces { p.initializeMemory(as: UInt8.self, repeating: 1) }
                return 30
            }
            #expect(seen == [4, 46] && n == 30 && w.written == 46)
            // A filler that claims more than it was given advances only that far.
            let m = try w.fill(upTo: 1000) { $0.reduce(0) { $0 + $1.count } + 5 }
            #expect(m == 74 && w.remaining == 0)
            #expect(throws: FUSEWireError.self) { try w.fill(upTo: -1) { _ in 0 } }
            #expect(try w.fill(upTo: 10) { _ in Issue.record("called with no room"); return 0 } == 0)
        }
    }

    @Test func anOwnedWriterKeepsItsBytes() throws {
        let w0 = ReplyWriter(owning: 4)
        defer { w0.release() }
        var w = w0
        try w.write(UInt16(0x0201))
        #expect(throws: FUSEWireError.self) { try w.write(UInt32(0)) }
        #expect(w.bytes == [1, 2])
    }
}
