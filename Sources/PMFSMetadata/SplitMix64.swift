/// SplitMix64 (Steele, Lea and Flood, 2014): a small, fast generator whose
/// sequence is fixed by its seed. For the package's fuzzers, torture runs,
/// crash writers and tests, where a failing seed must replay exactly; never
/// for anything that must be unpredictable.
package struct SplitMix64: RandomNumberGenerator, Sendable {
    package var state: UInt64
    package init(seed: UInt64) { state = seed }
    package mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
