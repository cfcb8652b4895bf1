import Testing
@testable import FUSEProtocol

/// A request cursor over scattered segments reads what a flat buffer would.
@Suite struct ScatteredPiecesTests {
    @Test func piecesAreTheSameBytesAsASliceOfTheWhole() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            let sizes = (0..<Int.random(in: 0...6, using: &rng)).map { _ in Int.random(in: 0...40, using: &rng) }
            let total = sizes.reduce(0, +)
            let whole = (0..<total).map { UInt8(truncatingIfNeeded: $0) }
            whole.withUnsafeBytes { buffer in
                var start = 0
                let segments = sizes.map { n -> UnsafeRawBufferPointer in
                    defer { start += n }
                    return UnsafeRawBufferPointer(rebasing: buffer[start..<(start + n)])
                }
                let skip = Int.random(in: 0...(total + 5), using: &rng), count = Int.random(in: 0...50, using: &rng)
                var cursor = RequestCursor(segments)
                guard skip <= total else {
                    #expect(throws: FUSEWireError.self) { try cursor.skip(skip) }
                    return
                }
                try? cursor.skip(skip)
                if count > total - skip { #expect(throws: FUSEWireError.self) { try cursor.segments(count) } }
                let got = try? cursor.segments(min(count, total - skip))
                let flat = got.map { Array($0.joined()) }
                #expect(flat == Array(whole[skip..<min(total, skip + count)]))
                #expect(got?.allSatisfy { $0.count > 0 } == true)
            }
        }
    }
}
