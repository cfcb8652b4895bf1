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
}
