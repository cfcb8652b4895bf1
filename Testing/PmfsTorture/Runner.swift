import Glibc
import PMFSConcurrency
import PMFSMetadata
import SystemPackage

/// An append-only log written with write(2): what write() returned survives kill -9.
struct OperationLog {
    let fd: Int32

    init(path: String) throws {
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Errno(rawValue: errno) }
    }

    func write(_ line: String) {
        var bytes = Array((line + "\n").utf8)
        bytes.withUnsafeMutableBytes { b in
            var done = 0
            while done < b.count {
                let n = Glibc.write(fd, b.baseAddress! + done, b.count - done)
                if n < 0 { if errno == EINTR { continue }; return }
                done += n
            }
        }
    }
}

/// Chooses random operations against the model, runs them on the store, and
/// checks each outcome against the model's prediction.
struct TortureRunner {
    let store: MetadataStore
    var model: TortureModel
    var rng: SplitMix64
    let maxEntries: Int
    let maxDepth = 4
    /// Pinned orphans and unnamed files by handle: the child's open files.
    var orphans: [Int: UInt64] = [:]
    var temporaries: [Int: UInt64] = [:]
    var nextHandle = 1
    /// Percent of operations that are snapshots (while the tree is not full).
    let snapshotPercent: Int
    /// What the run did to shared blocks, for the summary line.
    var counts = Counts()

    struct Counts: CustomStringConvertible {
        var snapshots = 0
        /// Writes that copied shared blocks on write.
        var copiesOnWrite = 0
        /// Time in the store: all operations, snapshots (where kills should land too).
        var operationTime = Duration.zero
        var snapshotTime = Duration.zero
        var snapshotsTimed = 0

        mutating func time(_ op: TortureOp, _ d: Duration) {
            operationTime += d
            if case .snapshot = op { snapshotTime += d; snapshotsTimed += 1 }
        }

        /// Uniform over twice the mean time of the snapshots so far (at least 100 µs):
        /// about half the kills land inside the snapshot.
        func snapshotKillDelay(_ r: inout SplitMix64) -> UInt32 {
            let mean = snapshotsTimed > 0 ? snapshotTime / snapshotsTimed : .zero
            let span = max(100, 2 * (mean.components.attoseconds / 1_000_000_000_000 + mean.components.seconds * 1_000_000))
            return UInt32(clamping: r.next() % UInt64(span))
        }

        mutating func add(_ o: Counts) {
            snapshots += o.snapshots
            copiesOnWrite += o.copiesOnWrite
            operationTime += o.operationTime
            snapshotTime += o.snapshotTime
        }

        var description: String {
            let share = operationTime > .zero ? Int(100 * (snapshotTime / operationTime)) : 0
            return "snapshots=\(snapshots) copies-on-write=\(copiesOnWrite) store-time=\(operationTime) snapshot-share=\(share)%"
        }
    }

    init(store: MetadataStore, model: TortureModel, seed: UInt64, maxEntries: Int, snapshotPercent: Int = 1) {
        self.store = store
        self.model = model
        self.rng = SplitMix64(seed: seed)
        self.maxEntries = maxEntries
        self.snapshotPercent = snapshotPercent
    }

    private mutating func below(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }

    private mutating func name() -> String {
        switch below(20) {
        case 0: return String(repeating: "long", count: 11) + "-\(below(6))"   // > 40 bytes: stored out of line
        default: return "n\(below(24))"
        }
    }

    // MARK: choosing

    /// Candidate paths, rebuilt every few operations: listing the tree costs far
    /// more than an operation, and a kill should mostly land inside operations.
    /// Stale candidates only make more operations fail (ENOENT), which the model predicts.
    struct Candidates {
        var list: [TortureModel.Listed] = []
        var dirs: [TortureModel.Listed] = []
        var files: [TortureModel.Listed] = []
        var emptyDirs: [TortureModel.Listed] = []
    }
    var candidates = Candidates()
    var candidatesAge = 0

    private mutating func refreshCandidates() {
        var c = Candidates()
        c.list = model.listing()
        c.dirs = [TortureModel.Listed(path: "", id: TortureModel.rootID, depth: 0)]
        for e in c.list {
            let n = model.nodes[e.id]!
            switch n.type {
            case .directory:
                c.dirs.append(e)
                if n.children.isEmpty { c.emptyDirs.append(e) }
            case .regular: c.files.append(e)
            default: break
            }
        }
        candidates = c
    }

    mutating func generate() -> TortureOp {
        if candidatesAge == 0 { refreshCandidates() }
        candidatesAge = (candidatesAge + 1) % 8
        let list = candidates.list, dirs = candidates.dirs, files = candidates.files, emptyDirs = candidates.emptyDirs
        let full = list.count >= maxEntries

        func pick<T>(_ a: [T], _ r: inout TortureRunner) -> T? { a.isEmpty ? nil : a[r.below(a.count)] }
        var me = self
        defer { self = me }

        let anyPath = { (r: inout TortureRunner) -> String in
            if r.below(25) == 0 { return "/missing\(r.below(3))" }
            return pick(list, &r)?.path ?? "/missing"
        }
        let filePath = { (r: inout TortureRunner) -> String in
            if r.below(12) == 0 { return anyPath(&r) }
            return pick(files, &r)?.path ?? anyPath(&r)
        }
        let newPath = { (r: inout TortureRunner, shallow: Bool) -> String in
            let candidates = shallow ? dirs.filter { $0.depth < r.maxDepth } : dirs
            let d = pick(candidates, &r) ?? dirs[0]
            return d.path + "/" + r.name()
        }
        let perm = { (r: inout TortureRunner) -> UInt32 in [0o644, 0o600, 0o755, 0o4755, 0o1777, 0o444][r.below(6)] }
        // Mostly a directory near the top (the shallowest of three: large trees,
        // long transactions for kills to cut); sometimes anything (ENOTDIR,
        // ENOENT), or the root (EINVAL: every target is inside it). The copy
        // lands in a shallow directory, but the tree it copies may be deep.
        let snapshot = { (r: inout TortureRunner) -> TortureOp in
            var source = "/"
            if r.below(6) == 0 {
                source = anyPath(&r)
            } else if let d = (0..<3).compactMap({ _ in pick(dirs, &r) }).min(by: { $0.depth < $1.depth }), !d.path.isEmpty {
                source = d.path
            }
            return .snapshot(source, newPath(&r, true), r.below(3) == 0 ? 1 : 0)
        }

        if !full && me.snapshotPercent > 1 && me.below(100) < me.snapshotPercent - 1 { return snapshot(&me) }
        var roll = me.below(100)
        if full && roll < 30 { roll = 30 + me.below(15) }   // shrink: unlink and rmdir instead of creating
        switch roll {
        case 0..<13: return .create(newPath(&me, false), perm(&me))
        case 13..<14: return snapshot(&me)
        case 14..<20: return .mkdir(newPath(&me, true), perm(&me))
        case 20..<24:
            let target = me.below(10) == 0 ? String(repeating: "t", count: 300 + me.below(100)) : "../n\(me.below(24))"
            return .symlink(newPath(&me, false), target)
        case 24..<30:
            let src = me.below(10) == 0 ? anyPath(&me) : filePath(&me)
            return .link(src, newPath(&me, false))
        case 30..<40: return .unlink(me.below(4) == 0 ? anyPath(&me) : filePath(&me))
        case 40..<45:
            // Mostly empty directories, so the tree really shrinks; sometimes a full one (ENOTEMPTY).
            if me.below(4) != 0, let d = pick(emptyDirs, &me) { return .rmdir(d.path) }
            return .rmdir(anyPath(&me))
        case 45..<60:
            let src = anyPath(&me)
            let dst = me.below(3) == 0 ? anyPath(&me) : newPath(&me, false)
            let flags: UInt32 = [0, 0, 0, 0, 0, 0, RenameFlags.noReplace.rawValue, RenameFlags.exchange.rawValue][me.below(8)]
            return .rename(src, dst, flags)
        case 60..<68:
            var spec = SetattrSpec()
            if me.below(2) == 0 { spec.mode = perm(&me) }
            if me.below(4) == 0 { spec.uid = UInt32(me.below(3) * 1000) }
            if me.below(3) == 0 { spec.size = [0, 1, 4095, 4096, 40_000, 200_000][me.below(6)] }
            if me.below(3) == 0 { spec.atime = 1_000_000 + Int64(me.below(1000)) }
            if me.below(3) == 0 { spec.mtime = 2_000_000 + Int64(me.below(1000)) }
            return .setattr(me.below(3) == 0 ? anyPath(&me) : filePath(&me), spec)
        case 68..<76:
            let value = (0..<me.below(40)).map { _ in UInt8(me.below(256)) }
            return .setxattr(anyPath(&me), "user.a\(me.below(5))", value, me.below(3))
        case 76..<80: return .removexattr(anyPath(&me), "user.a\(me.below(5))")
        case 80..<84: return .allocate(filePath(&me), UInt64(me.below(48)), UInt64(1 + me.below(16)))
        case 84..<88: return .write(filePath(&me), UInt64(me.below(48)), UInt64(1 + me.below(16)))
        case 88..<92: return .punch(filePath(&me), UInt64(me.below(48)), UInt64(1 + me.below(16)))
        case 92..<95:
            let k = me.nextHandle; me.nextHandle += 1
            return .orphan(filePath(&me), k)
        case 95..<97:
            if let k = me.orphans.keys.min() { return .unpin(k) }
            return .unpin(0)
        case 97..<99:
            let k = me.nextHandle; me.nextHandle += 1
            return .tmpfile(k, perm(&me))
        default:
            if let k = me.temporaries.keys.min() { return .linkTmp(k, newPath(&me, false)) }
            return .create(newPath(&me, false), perm(&me))
        }
    }

    // MARK: running

    private func walk(_ components: some Collection<String>) throws -> UInt64 {
        var ino = TortureModel.PMFS_ROOT
        for c in components { ino = try store.lookup(ino, try FileName(c)).ino }
        return ino
    }

    private func walk(_ path: String) throws -> UInt64 { try walk(TortureModel.components(path)) }

    private func parent(_ path: String) throws -> (UInt64, FileName) {
        let c = TortureModel.components(path)
        return (try walk(c.dropLast()), try FileName(c.last!))
    }

    /// Runs `op` on the store; returns the errno it failed with, nil on success.
    /// Anything but an errno (a damaged pool) is thrown.
    mutating func execute(_ op: TortureOp) throws -> Errno? {
        do {
            try execute0(op)
            return nil
        } catch let e as Errno {
            return e
        }
    }

    private mutating func execute0(_ op: TortureOp) throws {
        switch op {
        case .create(let p, let m):
            let (d, n) = try parent(p)
            _ = try store.create(d, n, NewInode(mode: UInt32(S_IFREG) | m))
        case .mkdir(let p, let m):
            let (d, n) = try parent(p)
            _ = try store.mkdir(d, n, NewInode(mode: m))
        case .symlink(let p, let t):
            let (d, n) = try parent(p)
            _ = try store.symlink(d, n, target: Array(t.utf8), uid: 0, gid: 0)
        case .link(let old, let new):
            let ino = try walk(old)
            let (d, n) = try parent(new)
            _ = try store.link(ino, newParent: d, newName: n)
        case .unlink(let p):
            let (d, n) = try parent(p)
            try store.unlink(d, n)
        case .rmdir(let p):
            let (d, n) = try parent(p)
            try store.rmdir(d, n)
        case .rename(let old, let new, let flags):
            let (od, on) = try parent(old)
            let (nd, nn) = try parent(new)
            try store.rename(od, on, nd, nn, flags: RenameFlags(rawValue: flags))
        case .setattr(let p, let s):
            let ino = try walk(p)
            _ = try store.setattr(ino, AttributeChanges(
                mode: s.mode, uid: s.uid, size: s.size,
                atime: s.atime.map { Timestamp(seconds: $0, nanoseconds: 0) },
                mtime: s.mtime.map { Timestamp(seconds: $0, nanoseconds: 0) }))
        case .setxattr(let p, let name, let value, let mode):
            let ino = try walk(p)
            try store.setxattr(ino, Array(name.utf8), value, mode: [XattrSetMode.any, .create, .replace][mode])
        case .removexattr(let p, let name):
            try store.removexattr(try walk(p), Array(name.utf8))
        case .allocate(let p, let start, let count):
            try store.allocateBlocks(try walk(p), start: start, count: count)
        case .punch(let p, let start, let count):
            try store.punchBlocks(try walk(p), start: start, count: count)
        case .orphan(let p, let k):
            let (d, n) = try parent(p)
            let ino = try store.lookup(d, n, pin: true).ino
            do { try store.unlink(d, n) } catch { try store.unpin(ino); throw error }
            orphans[k] = ino
        case .unpin(let k):
            if let ino = orphans.removeValue(forKey: k) { try store.unpin(ino) }
        case .tmpfile(let k, let m):
            temporaries[k] = try store.tmpfile(TortureModel.PMFS_ROOT, NewInode(mode: UInt32(S_IFREG) | m)).ino
        case .snapshot(let source, let target, let readOnly):
            let (d, n) = try parent(target)
            _ = try store.snapshot(try walk(source), into: d, name: n, readOnly: readOnly == 1)
            counts.snapshots += 1
        case .write(let p, let start, let count):
            if try writeBack(try walk(p), start: start, count: count) { counts.copiesOnWrite += 1 }
        case .linkTmp(let k, let p):
            guard let ino = temporaries[k] else { throw Errno.noSuchFileOrDirectory }
            let (d, n) = try parent(p)
            _ = try store.link(ino, newParent: d, newName: n)
            temporaries[k] = nil
            try store.unpin(ino)   // the "file descriptor" closes once it has a name
        }
    }

    /// SIGKILL to this process from another thread after `delay` µs: a kill
    /// point inside the operation now starting (or, if it ends first, a later one).
    static func killSelf(afterMicroseconds delay: UInt32) {
        // Never joined: the kill ends the process.
        let killer = JoinableThread.spawn {
            usleep(delay)
            kill(getpid(), SIGKILL)
        }
        if killer == nil { kill(getpid(), SIGKILL) }
    }

    /// The pool side of the data tier's write-back (FileDataTier.planWrites and
    /// commitWriteBack) for file blocks [start, +count), the data itself left
    /// out: holes and shared blocks get new blocks, reserved and claimed in
    /// DRAM, then mapped in one transaction that drops the shared blocks'
    /// owner. Returns whether it copied shared blocks.
    private func writeBack(_ ino: UInt64, start: UInt64, count: UInt64) throws -> Bool {
        let fresh = try store.mapBlocks(ino, start: start, count: count).filter { $0.deviceBlock == nil || $0.shared }
        let needed = fresh.reduce(0) { $0 + $1.length }
        try store.reserveBlocks(needed)
        var claims: [BlockRun] = [], mappings: [NewMapping] = []
        var consumed: UInt64 = 0
        do {
            for seg in fresh {
                let runs = try store.claimBlocks(ino, fileBlock: seg.fileBlock, count: seg.length, fromReservation: seg.length)
                consumed += seg.length
                claims += runs
                var fileBlock = seg.fileBlock
                for r in runs {
                    mappings.append(NewMapping(fileBlock: fileBlock, deviceBlock: r.start, length: r.length, replacesShared: seg.shared))
                    fileBlock += r.length
                }
            }
            try store.commitWrites(ino, mappings: mappings)
        } catch {
            store.releaseClaimedBlocks(claims)
            store.unreserveBlocks(needed - consumed)
            throw error
        }
        return fresh.contains { $0.shared }
    }

    /// The whole pool against the model: the tree, and the blocks its files,
    /// the pinned orphans and the unnamed files map.
    func verify() throws -> String? {
        let (tree, problems) = try TortureModel.read(from: store)
        if let d = problems.first ?? model.difference(from: tree.observed()) { return d }
        var files = Set(tree.listing().map { UInt64($0.id) })
        files.formUnion(orphans.values)
        files.formUnion(temporaries.values)
        return try TortureModel.blockAccounting(of: store, files: files).first
    }

    /// Runs `count` operations (0 = until killed), logging each; returns a
    /// description of the first outcome that differs from the model, if any.
    mutating func run(count: Int, log: OperationLog, verifyEvery: Int = 0, dieInSnapshot: Int = 0) throws -> String? {
        var n = 0, snapshotsBegun = 0
        var killTimer = SplitMix64(seed: rng.state ^ 0x6b69_6c6c)   // apart from the operations' sequence
        while count == 0 || n < count {
            n += 1
            let op = generate()
            log.write("BEGIN \(n) \(op.line)")
            if case .snapshot = op {
                snapshotsBegun += 1
                if snapshotsBegun == dieInSnapshot { Self.killSelf(afterMicroseconds: counts.snapshotKillDelay(&killTimer)) }
            }
            // Applied in place: on a mismatch the run ends anyway, and a copy per operation costs O(tree).
            let expected = model.apply(op)
            let actual: Errno?
            let started = monotonicNanoseconds()
            do {
                actual = try execute(op)
                counts.time(op, .nanoseconds(Int64(clamping: nanosecondsSince(started))))
            } catch {
                log.write("ERROR \(n) \(error)")
                return "op \(n) (\(op.line)): \(error)"
            }
            guard actual == expected else {
                let why = "op \(n) (\(op.line)): model expects \(expected.map { "\($0)" } ?? "success"), store gave \(actual.map { "\($0)" } ?? "success")"
                log.write("MISMATCH \(n) \(why)")
                return why
            }
            if let actual { log.write("FAIL \(n) \(actual.rawValue)") } else { log.write("END \(n)") }
            // Replay aid: find the first operation after which the pool and the model disagree.
            if verifyEvery > 0 && n % verifyEvery == 0 {
                if let d = try verify() {
                    log.write("MISMATCH \(n) after \(op.line): \(d)")
                    return "after op \(n) (\(op.line)): \(d)"
                }
            }
        }
        return nil
    }
}
