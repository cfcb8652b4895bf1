// libFuzzer target: the split-virtqueue descriptor walker (VhostUser's
// Virtqueue.attach / pop / push) against a guest memory built from the input.
// Built and run by tools/fuzz/run.sh; see tools/fuzz/README.md.
//
// Input: a 16-byte header, then the first bytes of guest region A.
//   0  u16  queue size - 1 (taken modulo 256)
//   2  u16  descriptor table offset in region A (16-byte aligned as the spec says)
//   4  u16  available ring offset (2-byte aligned)
//   6  u16  used ring offset (4-byte aligned)
//   8  u8   bit 0: EVENT_IDX negotiated
//   9  u8   pops to try, at most (0 means 2 x queue size)
//  10..15   unused
// Region A is 64 KiB at guest-physical 0, region B 4 KiB right after it, each
// its own heap allocation of exactly that size: ASan reports any access outside
// the guest's memory. Each accepted chain's buffers are checked to lie in one
// region and are read and written in full; each is then returned on the used ring.
import Glibc
@testable import VhostUser

private let regionASize = 64 << 10
private let regionBSize = 4 << 10
private let frontEndA: UInt64 = 0x7f00_0000_0000   // where "QEMU" has region A mapped
private let frontEndB: UInt64 = 0x7f10_0000_0000

@inline(__always)
private func u16(_ data: UnsafeRawBufferPointer, _ offset: Int) -> Int {
    Int(data.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
}

private func inside(_ start: UnsafeRawPointer, _ count: Int, _ base: UnsafeRawPointer, _ size: Int) -> Bool {
    start >= base && count <= size && start <= base + (size - count)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func descriptorWalkerFuzz(_ bytes: UnsafeRawPointer, _ count: Int) -> CInt {
    guard count >= 16 else { return -1 }   // not worth keeping in the corpus
    let input = UnsafeRawBufferPointer(start: bytes, count: count)
    let queueSize = UInt16(u16(input, 0) % 256 + 1)
    let descriptorOffset = u16(input, 2) & ~15
    let availableOffset = u16(input, 4) & ~1
    let usedOffset = u16(input, 6) & ~3
    let eventIndex = input[8] & 1 != 0
    let maxPops = input[9] == 0 ? 2 * Int(queueSize) : Int(input[9])

    let a = UnsafeMutableRawPointer.allocate(byteCount: regionASize, alignment: 4096)
    let b = UnsafeMutableRawPointer.allocate(byteCount: regionBSize, alignment: 4096)
    defer { a.deallocate(); b.deallocate() }
    memset(a, 0, regionASize)
    memset(b, 0x5a, regionBSize)
    memcpy(a, bytes + 16, min(count - 16, regionASize))

    let memory = GuestMemory(regions: [
        GuestMemory.Region(guestPhysical: 0, size: UInt64(regionASize), userAddress: frontEndA, mapping: a,
                           mappingSize: regionASize, offsetInMapping: 0),
        GuestMemory.Region(guestPhysical: UInt64(regionASize), size: UInt64(regionBSize), userAddress: frontEndB, mapping: b,
                           mappingSize: regionBSize, offsetInMapping: 0),
    ])
    let queue = Virtqueue(index: 1)
    queue.size = queueSize
    queue.descriptorAddress = frontEndA + UInt64(descriptorOffset)
    queue.availableAddress = frontEndA + UInt64(availableOffset)
    queue.usedAddress = frontEndA + UInt64(usedOffset)
    queue.eventIndex = eventIndex
    guard queue.attach(memory) else { return 0 }   // rings outside region A: refused, nothing to walk

    var checksum: UInt8 = 0
    for _ in 0..<maxPops {
        let chain: Virtqueue.Chain?
        do { chain = try queue.pop() } catch { continue }   // refused; the backend drops it and goes on
        guard let chain else { break }
        precondition(chain.head < queueSize, "head \(chain.head) outside a queue of \(queueSize)")
        for r in chain.readable {
            precondition(r.count > 0)
            precondition(inside(r.baseAddress!, r.count, a, regionASize) || inside(r.baseAddress!, r.count, b, regionBSize),
                         "readable buffer outside guest memory")
            for byte in r { checksum &+= byte }
        }
        for w in chain.writable {
            precondition(w.count > 0)
            precondition(inside(w.baseAddress!, w.count, a, regionASize) || inside(w.baseAddress!, w.count, b, regionBSize),
                         "writable buffer outside guest memory")
            // Writing replies may overwrite the guest's rings: the walker must cope with that too.
            memset(w.baseAddress!, Int32(checksum), w.count)
        }
        precondition(chain.readableBytes + chain.writableBytes <= 1 << 26)
        queue.push(chain.head, length: min(chain.writableBytes, 64))
        queue.setKicks(enabled: true)
    }
    _ = queue.hasMore
    return 0
}

// MARK: seeds

@_cdecl("LLVMFuzzerInitialize")
public func descriptorWalkerFuzzInitialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>) -> CInt {
    if let dir = getenv("PMFS_FUZZ_WRITE_SEEDS").map({ String(cString: $0) }) {
        mkdir(dir, 0o755)
        for (i, seed) in WalkerSeed.all.enumerated() {
            let path = "\(dir)/seed-\(i)"
            guard let f = fopen(path, "w") else { fatalError("cannot write \(path)") }
            seed.withUnsafeBytes { _ = fwrite($0.baseAddress, 1, $0.count, f) }
            fclose(f)
        }
    }
    return 0
}

/// Queues of 8 with the table at 0, the available ring at 128, the used ring at
/// 160, an indirect table at 256; buffers from 1024 on.
struct WalkerSeed {
    var bytes = [UInt8](repeating: 0, count: 16 + 512)
    var offered: UInt16 = 0

    init(size: UInt16 = 8, eventIndex: Bool = false) {
        put(UInt16(size - 1), at: 0)
        put(UInt16(0), at: 2)
        put(UInt16(128), at: 4)
        put(UInt16(160), at: 6)
        bytes[8] = eventIndex ? 1 : 0
    }

    mutating func put<T>(_ v: T, at offset: Int) {
        withUnsafeBytes(of: v) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
    }

    /// Descriptor `i` of the ring's table (or of the indirect table at 256).
    mutating func descriptor(_ i: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0, indirect: Bool = false) {
        let d = 16 + (indirect ? 256 : 0) + 16 * i
        put(address, at: d)
        put(length, at: d + 8)
        put(flags, at: d + 12)
        put(next, at: d + 14)
    }

    mutating func offer(_ head: UInt16) {
        put(head, at: 16 + 128 + 4 + 2 * Int(offered % 8))
        offered &+= 1
        put(offered, at: 16 + 128 + 2)
    }

    static var all: [[UInt8]] {
        let next = Virtqueue.descriptorNext, write = Virtqueue.descriptorWrite, indirect = Virtqueue.descriptorIndirect
        var seeds: [WalkerSeed] = []
        // A request (readable header + body) and its reply buffer; an indirect chain; a buffer in region B.
        var s = WalkerSeed(eventIndex: true)
        s.descriptor(0, address: 1024, length: 40, flags: next, next: 1)
        s.descriptor(1, address: 2048, length: 100, flags: write)
        s.descriptor(2, address: 256, length: 48, flags: indirect)
        s.descriptor(0, address: 3072, length: 64, flags: next, next: 1, indirect: true)
        s.descriptor(1, address: 4096, length: 16, flags: next | write, next: 2, indirect: true)
        s.descriptor(2, address: 8192, length: 4096, flags: write, indirect: true)
        s.descriptor(3, address: 65536, length: 4096, flags: write)
        s.offer(0)
        s.offer(2)
        s.offer(3)
        seeds.append(s)
        // Hostile: a loop, a head past the queue, a buffer across the region boundary,
        // readable after writable, a nested indirect table, an odd indirect length.
        s = WalkerSeed()
        s.descriptor(0, address: 1024, length: 8, flags: next, next: 1)
        s.descriptor(1, address: 1024, length: 8, flags: next, next: 0)
        s.descriptor(2, address: 65536 - 32, length: 64, flags: 0)
        s.descriptor(3, address: 1024, length: 8, flags: write | next, next: 4)
        s.descriptor(4, address: 1024, length: 8, flags: 0)
        s.descriptor(5, address: 256, length: 32, flags: indirect)
        s.descriptor(0, address: 256, length: 32, flags: indirect, indirect: true)
        s.descriptor(6, address: 256, length: 20, flags: indirect)
        for head: UInt16 in [0, 9, 2, 3, 5, 6] { s.offer(head) }
        seeds.append(s)
        // A full ring of one-descriptor chains, the available index wrapped.
        s = WalkerSeed()
        for i in 0..<8 { s.descriptor(i, address: 1024 + 64 * UInt64(i), length: 64, flags: i % 2 == 0 ? 0 : write) }
        s.offered = 65532
        for i in 0..<8 { s.offer(UInt16(i)) }
        seeds.append(s)
        return seeds.map(\.bytes)
    }
}
