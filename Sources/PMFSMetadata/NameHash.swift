/// The seeded hash of directory entry names. The seed is secret per file system
/// (drawn at mkfs), so a guest cannot aim names at one hash chain.
@inline(__always)
package func nameHash(_ name: UnsafeRawBufferPointer, seed: UInt64) -> UInt32 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ seed
    for byte in name {
        h ^= UInt64(byte)
        h &*= 0x0000_0100_0000_01B3
    }
    // Finalize (murmur3 fmix64) so every input bit reaches the low 32 bits.
    h ^= h >> 33
    h &*= 0xff51_afd7_ed55_8ccd
    h ^= h >> 33
    h &*= 0xc4ce_b9fe_1a85_ec53
    h ^= h >> 33
    return UInt32(truncatingIfNeeded: h)
}

/// FNV-1a 64 of a byte range: the checksum of the data device header.
func fnv1a64(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes {
        h ^= UInt64(b)
        h &*= 0x0000_0100_0000_01B3
    }
    return h
}
