import Glibc
import Testing

/// The pool-damage fuzzer (pmfs-damage-fuzz) over a fixed seed range: each
/// seed damages a copy of a real pool, walks it in a child (no trap, no hang,
/// the device header intact), and fsck.pmfs must repair it. About 40 s.
/// PMFS_DAMAGE_FUZZ_SEEDS=N runs N seeds (manual mode: thousands), from
/// PMFS_DAMAGE_FUZZ_FIRST_SEED (default 1).
@Suite struct DamageFuzzTests {
    @Test func damagedPoolsNeverCrashAndFsckRepairsThem() throws {
        let seeds = getenv("PMFS_DAMAGE_FUZZ_SEEDS").flatMap { Int(String(cString: $0)) } ?? 40
        let first = getenv("PMFS_DAMAGE_FUZZ_FIRST_SEED").flatMap { UInt64(String(cString: $0)) } ?? 1
        let r = try Tool.run("pmfs-damage-fuzz", ["--first-seed", "\(first)", "--iterations", "\(seeds)"])
        #expect(r.status == 0, "\(r.output)\n\(r.stderr)")
        print(r.output.split(separator: "\n").last ?? "")
    }

    /// The same through pmfsd's whole request path: pmfsd serves each damaged
    /// pool on a host mount, a client walks it with system calls, and pmfsd
    /// must outlive it and stop cleanly. About 1.3 s a seed.
    /// PMFS_DAMAGE_FUZZ_MOUNT_SEEDS=N for more.
    @Test func damagedPoolsServedByPmfsdNeverCrashIt() throws {
        let seeds = getenv("PMFS_DAMAGE_FUZZ_MOUNT_SEEDS").flatMap { Int(String(cString: $0)) } ?? 16
        let r = try Tool.run("pmfs-damage-fuzz", ["--through", "mount", "--first-seed", "5000", "--iterations", "\(seeds)"])
        #expect(r.status == 0, "\(r.output)\n\(r.stderr)")
        print(r.output.split(separator: "\n").last ?? "")
    }

    /// Seed 20017 gives a directory inode a mode of no file type; the kernel
    /// refuses that entry of a READDIRPLUS reply and sends a FORGET for it as
    /// a request of its own, over io_uring when the mount uses it, and waits
    /// for that request to end. pmfsd once left it uncommitted, and the walk
    /// hung in getdents.
    @Test func aRefusedReaddirplusEntryDoesNotHangTheMount() throws {
        let r = try Tool.run("pmfs-damage-fuzz", ["--through", "mount", "--first-seed", "20017", "--iterations", "1"])
        #expect(r.status == 0, "\(r.output)\n\(r.stderr)")
    }
}
