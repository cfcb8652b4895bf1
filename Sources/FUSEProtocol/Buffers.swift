/// The buffer model between the transports and the FUSE engine: a request is
/// read through a `RequestCursor` over the readable memory a transport has
/// (one buffer from /dev/fuse or an io_uring entry, a guest's descriptor
/// chain in pieces), a reply is written through a `ReplyWriter` over the
/// writable memory. Both check every length before touching memory and throw
/// `FUSEWireError` instead of trapping, whatever a peer put in the lengths.

/// Reads a request from one or more readable segments, in order, as if they
/// were one run of bytes. Zero-length segments are allowed and skipped.
public struct RequestCursor {
    // One buffer is kept apart from the array so that wrapping it allocates nothing.
    private let single: UnsafeRawBufferPointer?
    private let memory: [UnsafeRawBufferPointer]
    private var index = 0
    private var offset = 0
    // Bytes consumed since the first segment's start, where this cursor's view
    // begins and where it ends (a prefix narrows the view, sharing the segments).
    private var consumed = 0
    private let origin: Int
    private let end: Int
    /// How many bytes this cursor can read in all.
    public var total: Int { end - origin }
    /// How many bytes have been consumed so far.
    public var position: Int { consumed - origin }

    public init(_ segments: [UnsafeRawBufferPointer]) {
        single = nil
        memory = segments
        origin = 0
        end = segments.reduce(0) { $0 + $1.count }
    }

    public init(_ bytes: UnsafeRawBufferPointer) {
        single = bytes
        memory = []
        origin = 0
        end = bytes.count
    }

    /// The view of `base` from where it stands, `count` bytes long.
    private init(narrowing base: RequestCursor, to count: Int) {
        single = base.single
        memory = base.memory
        index = base.index
        offset = base.offset
        consumed = base.consumed
        origin = base.consumed
        end = base.consumed + count
    }

    private var segmentCount: Int { single == nil ? memory.count : 1 }
    private func segment(_ i: Int) -> UnsafeRawBufferPointer { single ?? memory[i] }

    public var remaining: Int { end - consumed }

    /// Consumes `count` bytes, handing each contiguous piece to `body` in order.
    private mutating func consume(_ count: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard count >= 0, count <= remaining else { throw FUSEWireError.truncated(needed: count, available: remaining) }
        var wanted = count
        while wanted > 0 {
            let s = segment(index)
            let n = min(s.count - offset, wanted)
            if n > 0 { try body(UnsafeRawBufferPointer(start: s.baseAddress! + offset, count: n)) }
            wanted -= n
            offset += n
            consumed += n
            if offset == s.count { index += 1; offset = 0 }
        }
    }
    /// Copies the next `buffer.count` bytes into `buffer`.
    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        try consume(buffer.count) { piece in
            (buffer.baseAddress! + done).copyMemory(from: piece.baseAddress!, byteCount: piece.count)
            done += piece.count
        }
    }

    /// A fixed-layout struct (a header, an op's arguments), unaligned and
    /// possibly split across segments.
    public mutating func read<T: BitwiseCopyable>(_ type: T.Type = T.self) throws -> T {
        try readPadded(T.self, minimum: MemoryLayout<T>.size)
    }

    /// A struct that older peers send shorter (compat sizes): at least
    /// `minimum` bytes are read, missing ones as zero.
    public mutating func readPadded<T: BitwiseCopyable>(_ type: T.Type = T.self, minimum: Int) throws -> T {
        let size = MemoryLayout<T>.size
        guard minimum >= 0, remaining >= minimum else { throw FUSEWireError.truncated(needed: minimum, available: remaining) }
        let n = min(size, remaining)
        return try withUnsafeTemporaryAllocation(byteCount: size, alignment: MemoryLayout<T>.alignment) { buffer in
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]))
            return buffer.loadUnaligned(as: T.self)
        }
    }

    /// A NUL-terminated name; the NUL is consumed, not returned. Throws (and
    /// consumes nothing) when the bytes end before a NUL.
    public mutating func readName() throws -> [UInt8] {
        try withName { Array($0) }
    }

    /// A NUL-terminated name, handed to `body` without the NUL and where it
    /// lies when it lies in one segment (the usual case: a guest's kernel gives
    /// each argument a buffer of its own); one split across segments is
    /// gathered into a buffer of its own first. The view is valid only during
    /// `body`. Throws (and consumes nothing) when the bytes end before a NUL.
    public mutating func withName<R>(_ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        // Step over empty segments (an argument of size 0 before the name); no byte is consumed.
        while index < segmentCount && offset == segment(index).count { index += 1; offset = 0 }
        guard index < segmentCount else { throw FUSEWireError.malformed("string without NUL") }
        let s = segment(index)
        let here = UnsafeRawBufferPointer(rebasing: s[offset..<(offset + min(s.count - offset, remaining))])
        if let nul = here.firstIndex(of: 0) {
            let name = UnsafeRawBufferPointer(rebasing: here[..<nul])
            try skip(nul + 1)
            return try body(name)
        }
        let gathered = try gatherName()
        return try gathered.withUnsafeBytes { try body($0) }
    }

    /// A name that continues past the current segment, copied out (its length
    /// is bounded by the request's).
    private mutating func gatherName() throws -> [UInt8] {
        let start = self
        var name: [UInt8] = []
        while index < segmentCount && remaining > 0 {
            let s = segment(index)
            let piece = UnsafeRawBufferPointer(rebasing: s[offset..<(offset + min(s.count - offset, remaining))])
            if let end = piece.firstIndex(of: 0) {
                name.append(contentsOf: piece[..<end])
                try skip(end + 1)
                return name
            }
            name.append(contentsOf: piece)
            consumed += piece.count
            offset += piece.count
            if offset == s.count { index += 1; offset = 0 }
        }
        self = start
        throw FUSEWireError.malformed("string without NUL")
    }

    public mutating func skip(_ count: Int) throws { try consume(count) { _ in } }

    /// The next `count` bytes as pieces of the same memory, not copied (a
    /// WRITE's payload).
    public mutating func segments(_ count: Int) throws -> [UnsafeRawBufferPointer] {
        var pieces: [UnsafeRawBufferPointer] = []
        try consume(count) { pieces.append($0) }
        return pieces
    }

    /// The next `count` bytes if they lie in one segment (no array needed).
    public mutating func contiguous(_ count: Int) throws -> UnsafeRawBufferPointer? {
        guard count >= 0, count <= remaining else { throw FUSEWireError.truncated(needed: count, available: remaining) }
        guard count > 0, index < segmentCount else { return count == 0 ? UnsafeRawBufferPointer(start: nil, count: 0) : nil }
        let s = segment(index)
        guard s.count - offset >= count else { return nil }
        let piece = UnsafeRawBufferPointer(start: s.baseAddress! + offset, count: count)
        try skip(count)
        return piece
    }

    /// A cursor over only the first `count` bytes from here (arguments before
    /// trailing extensions): the same segments, a narrower view.
    public func prefix(_ count: Int) throws -> RequestCursor {
        guard count >= 0, count <= remaining else { throw FUSEWireError.truncated(needed: count, available: remaining) }
        return RequestCursor(narrowing: self, to: count)
    }
}

/// Writes a reply into writable segments (a guest's buffers, an io_uring
/// entry's header room and payload) or into one buffer it owns, in order,
/// across segment boundaries. Knows how many bytes it has written; never
/// writes past the end of its memory.
public struct ReplyWriter {
    private let single: UnsafeMutableRawBufferPointer?
    private let segments: [UnsafeMutableRawBufferPointer]
    private var index = 0
    private var offset = 0
    /// How many bytes the segments can take.
    public let capacity: Int
    /// How many bytes have been written.
    public private(set) var written = 0
    private let owned: UnsafeMutableRawBufferPointer?

    public init(_ segments: [UnsafeMutableRawBufferPointer]) {
        single = nil
        self.segments = segments
        capacity = segments.reduce(0) { $0 + $1.count }
        owned = nil
    }

    public init(_ buffer: UnsafeMutableRawBufferPointer) {
        single = buffer
        segments = []
        capacity = buffer.count
        owned = nil
    }

    private var segmentCount: Int { single == nil ? segments.count : 1 }
    private func segment(_ i: Int) -> UnsafeMutableRawBufferPointer { single ?? segments[i] }

    /// A writer over `capacity` bytes of its own; `release()` frees them.
    public init(owning capacity: Int) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(capacity, 0), alignment: 16)
        single = buffer
        segments = []
        self.capacity = buffer.count
        owned = buffer
    }

    /// Frees the memory of a writer made with `init(owning:)`.
    public func release() { owned?.deallocate() }

    public var remaining: Int { capacity - written }

    /// Forgets what was written (an error reply replaces a half-written one).
    public mutating func reset() { index = 0; offset = 0; written = 0 }

    /// Advances over `count` bytes, handing each contiguous piece to `body`.
    private mutating func advance(_ count: Int, _ body: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        guard count >= 0, count <= remaining else { throw FUSEWireError.truncated(needed: count, available: remaining) }
        var left = count
        while left > 0 {
            let s = segment(index)
            let n = min(s.count - offset, left)
            if n > 0 { try body(UnsafeMutableRawBufferPointer(start: s.baseAddress! + offset, count: n)) }
            left -= n
            offset += n
            written += n
            if offset == s.count { index += 1; offset = 0 }
        }
    }

    public mutating func write(bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        try advance(bytes.count) { piece in
            piece.baseAddress!.copyMemory(from: bytes.baseAddress! + done, byteCount: piece.count)
            done += piece.count
        }
    }

    public mutating func write<T: BitwiseCopyable>(_ value: T) throws {
        try withUnsafeBytes(of: value) { try write(bytes: $0) }
    }

    public mutating func write(zeros count: Int) throws {
        try advance(count) { $0.initializeMemory(as: UInt8.self, repeating: 0) }
    }

    /// Lets `fill` put up to `count` bytes straight into the reply memory (a
    /// READ's data) and advances by what it reports, at most `count`.
    public mutating func fill(upTo count: Int, _ body: ([UnsafeMutableRawBufferPointer]) throws -> Int) throws -> Int {
        try fill(upTo: count, contiguous: { try body([$0]) }, scattered: body)
    }

    /// `fill` with the memory in one piece when it is (no array of pieces is
    /// made then): `contiguous` gets it, otherwise `scattered` gets the pieces.
    public mutating func fill(upTo count: Int, contiguous: (UnsafeMutableRawBufferPointer) throws -> Int,
                              scattered: ([UnsafeMutableRawBufferPointer]) throws -> Int) throws -> Int {
        guard count >= 0 else { throw FUSEWireError.truncated(needed: count, available: remaining) }
        let wanted = min(count, remaining)
        guard wanted > 0 else { return 0 }
        // Where the next byte goes: a spent segment (its end reached) holds none.
        var probe = self
        while probe.offset == probe.segment(probe.index).count { probe.index += 1; probe.offset = 0 }
        let s = probe.segment(probe.index)
        let reported: Int
        if s.count - probe.offset >= wanted {
            reported = try contiguous(UnsafeMutableRawBufferPointer(start: s.baseAddress! + probe.offset, count: wanted))
        } else {
            var pieces: [UnsafeMutableRawBufferPointer] = []
            try probe.advance(wanted) { pieces.append($0) }
            reported = try scattered(pieces)
        }
        let used = max(0, min(reported, wanted))
        try advance(used) { _ in }
        return used
    }

    /// Overwrites bytes already written at `at` (the out-header's length once
    /// the reply is complete).
    public mutating func patch<T: BitwiseCopyable>(_ value: T, at position: Int) throws {
        let size = MemoryLayout<T>.size
        guard position >= 0, position <= written, size <= written - position else {
            throw FUSEWireError.truncated(needed: size, available: max(0, written - position))
        }
        var rewind = self
        rewind.reset()
        try rewind.advance(position) { _ in }
        try rewind.write(value)
    }

    /// The first `length` written bytes as one run (a /dev/fuse reply): in
    /// place when they lie in one segment, else gathered.
    public func withWritten<R>(_ length: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        let n = max(0, min(length, written))
        if n == 0 { return try body(UnsafeRawBufferPointer(start: nil, count: 0)) }
        if segmentCount == 1 { return try body(UnsafeRawBufferPointer(start: segment(0).baseAddress, count: n)) }
        return try Array(bytes.prefix(n)).withUnsafeBytes { try body($0) }
    }

    /// The written bytes, copied out (tests, and transports that send one buffer).
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(written)
        var left = written
        for i in 0..<segmentCount where left > 0 {
            let s = segment(i)
            let n = min(s.count, left)
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: s[0..<n]))
            left -= n
        }
        return out
    }
}
