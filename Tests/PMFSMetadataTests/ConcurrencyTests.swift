import Dispatch
import Glibc
import SystemPackage
import Testing
@testable import PMFSMetadata

@Suite struct ConcurrencyTests {
    /// Threads create, rename, link and unlink in shared directories at once;
    /// afterwards every count adds up.
    @Test func parallelNamespaceOperations() throws {
        let t = try TestPool(poolSize: 256 << 20)
        let store = t.store!
        let shared = try store.mkdir(root, name("shared"), dir()).ino
        let other = try store.mkdir(root, name("other"), dir()).ino
        let threads = 4, perThread = 2000
        DispatchQueue.concurrentPerform(iterations: threads) { tid in
            var rng = SystemRandomNumberGenerator()
            for i in 0..<perThread {
                let n = name("t\(tid)-\(i)")
                do {
                    let f = try store.create(shared, n, file())
                    switch Int.random(in: 0..<4, using: &rng) {
                    case 0: try store.rename(shared, n, other, n)
                    case 1: try store.unlink(shared, n)
                    case 2: _ = try store.link(f.ino, newParent: other, newName: name("l\(tid)-\(i)"))
                    default:
                        let d = try store.mkdir(other, name("d\(tid)-\(i)"), dir())
                        try store.rename(shared, n, d.ino, n)
                    }
                    _ = try store.lookup(root, name("shared"))
                    _ = try store.readdir(shared, cookie: 0, limit: 20)
                } catch {
                    Issue.record("thread \(tid) op \(i): \(error)")
                }
            }
        }
        // Cross-check: every entry points at a live inode whose nlink matches the references.
        var refs: [UInt64: UInt32] = [:]
        var subdirs = 0
        func walk(_ d: UInt64) throws {
            for e in try store.readdir(d, cookie: 2, limit: 1_000_000) {
                refs[e.ino, default: 0] += 1
                if e.type == .directory { subdirs += 1; try walk(e.ino) }
            }
        }
        try walk(root)
        for (ino, count) in refs {
            let a = try store.getattr(ino)
            if a.type == .directory {
                let children = try store.readdir(ino, cookie: 2, limit: 1_000_000).filter { $0.type == .directory }.count
                #expect(a.nlink == UInt32(2 + children))
            } else {
                #expect(a.nlink == count, "ino \(ino)")
            }
        }
        #expect(try store.getattr(root).nlink == 4)
    }

    /// Two threads renaming directories into each other's subtrees must never
    /// create a cycle.
    @Test func concurrentCrossRenamesNeverMakeCycles() throws {
        let t = try TestPool()
        let store = t.store!
        let a = try store.mkdir(root, name("a"), dir()).ino
        let b = try store.mkdir(root, name("b"), dir()).ino
        DispatchQueue.concurrentPerform(iterations: 2) { tid in
            for _ in 0..<500 {
                if tid == 0 {
                    try? store.rename(root, name("a"), b, name("a"))
                    try? store.rename(b, name("a"), root, name("a"))
                } else {
                    try? store.rename(root, name("b"), a, name("b"))
                    try? store.rename(a, name("b"), root, name("b"))
                }
            }
        }
        // Both are reachable from the root.
        #expect(try store.isAncestor(root, of: a))
        #expect(try store.isAncestor(root, of: b))
    }
}
