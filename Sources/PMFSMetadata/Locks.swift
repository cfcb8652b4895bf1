import PMFSConcurrency

/// Inode locks, striped: inode n is guarded by stripe n mod count. Operations on
/// several inodes lock their stripes in ascending stripe order, so two operations
/// can never wait on each other in a cycle.
final class InodeLockTable: @unchecked Sendable {
    private let stripes: [ReadWriteLock]
    private let mask: UInt64

    init(stripeCount: Int = 1024) {
        precondition(stripeCount > 0 && stripeCount & (stripeCount - 1) == 0)
        stripes = (0..<stripeCount).map { _ in ReadWriteLock() }
        mask = UInt64(stripeCount - 1)
    }

    private func stripeIndex(_ ino: UInt64) -> Int {
        // Mix the bits so consecutive inode numbers and a parent/child pair rarely share a stripe.
        var x = ino &* 0x9E37_79B9_7F4A_7C15
        x ^= x >> 29
        return Int(x & mask)
    }

    /// Damage found while working on one inode is reported naming it
    /// (`PoolError.damagedInode`), so the log says which file fsck.pmfs mends.
    func withShared<T>(_ ino: UInt64, _ body: () throws -> T) rethrows -> T {
        do { return try stripes[stripeIndex(ino)].withReadLock(body) } catch PoolError.corrupt(let what) {
            throw PoolError.damagedInode(ino, what)
        }
    }

    func withExclusive<T>(_ ino: UInt64, _ body: () throws -> T) rethrows -> T {
        do { return try stripes[stripeIndex(ino)].withWriteLock(body) } catch PoolError.corrupt(let what) {
            throw PoolError.damagedInode(ino, what)
        }
    }

    /// Locks the stripes of all `inos` exclusively, in ascending stripe order.
    func withExclusive<T>(_ inos: [UInt64], _ body: () throws -> T) rethrows -> T {
        try withStripes(inos, exclusive: true, body)
    }

    /// Locks the stripes of all `inos` shared, in ascending stripe order.
    func withShared<T>(_ inos: [UInt64], _ body: () throws -> T) rethrows -> T {
        try withStripes(inos, exclusive: false, body)
    }

    /// Locks the stripes of `a` and `b` shared, in ascending stripe order (a
    /// parent and a child: no array of inodes to sort).
    func withShared<T>(_ a: UInt64, _ b: UInt64, _ body: () throws -> T) rethrows -> T {
        try withStripes(a, b, exclusive: false, body)
    }

    /// Locks the stripes of `a` and `b` exclusively, in ascending stripe order.
    func withExclusive<T>(_ a: UInt64, _ b: UInt64, _ body: () throws -> T) rethrows -> T {
        try withStripes(a, b, exclusive: true, body)
    }

    private func withStripes<T>(_ a: UInt64, _ b: UInt64, exclusive: Bool, _ body: () throws -> T) rethrows -> T {
        let i = stripeIndex(a), j = stripeIndex(b)
        let low = min(i, j), high = max(i, j)
        if exclusive { stripes[low].lockForWriting() } else { stripes[low].lockForReading() }
        if high != low { if exclusive { stripes[high].lockForWriting() } else { stripes[high].lockForReading() } }
        defer {
            if high != low { stripes[high].unlock() }
            stripes[low].unlock()
        }
        return try body()
    }

    /// Locks every stripe exclusively, in ascending order (a snapshot: no
    /// inode changes or is read meanwhile).
    func withAllExclusive<T>(_ body: () throws -> T) rethrows -> T {
        for s in stripes { s.lockForWriting() }
        defer { for s in stripes.reversed() { s.unlock() } }
        return try body()
    }

    private func withStripes<T>(_ inos: [UInt64], exclusive: Bool, _ body: () throws -> T) rethrows -> T {
        var indices = inos.map(stripeIndex)
        indices.sort()
        var unique: [Int] = []
        unique.reserveCapacity(indices.count)
        for i in indices where unique.last != i { unique.append(i) }
        for i in unique {
            if exclusive { stripes[i].lockForWriting() } else { stripes[i].lockForReading() }
        }
        defer { for i in unique.reversed() { stripes[i].unlock() } }
        return try body()
    }
}

/// Locks that guard pool-wide structures. A transaction that needs several takes
/// them in ascending rank and holds them until it has committed or aborted, so no
/// other transaction can snapshot the same words before the outcome is known.
enum GlobalLockRank: Int, Comparable {
    case orphanList = 1
    case inodeAllocation = 2
    case spaceMap = 3

    static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}
