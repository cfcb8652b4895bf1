import Glibc
import Testing
@testable import PMFSData

/// `--io-engine auto`: the inline engine for memory-backed media, io_uring for devices.
@Suite struct EngineChoiceTests {
    /// A 1 MiB data file in `directory`, opened as a device with `auto`: its engine's name.
    func autoEngine(in directory: String) throws -> String {
        let path = "\(directory)/pmfs-engine-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(path, O_CREAT | O_RDWR | O_EXCL, 0o600)
        try #require(fd >= 0)
        ftruncate(fd, 1 << 20)
        close(fd)
        defer { unlink(path) }
        let device = try DataDevice(path: path, engine: .auto)
        defer { device.close() }
        return device.engine.name
    }

    @Test func aFileOnTmpfsGetsTheInlineEngine() throws {
        #expect(try autoEngine(in: "/dev/shm") == "inline")
    }

    @Test func aFileOnTheRootDiskGetsTheRing() throws {
        // Only where /var/tmp is a disk's file system (it is ext4 here and in CI).
        let fd = open("/var/tmp", O_RDONLY | O_DIRECTORY)
        try #require(fd >= 0)
        defer { close(fd) }
        guard !MemoryBackedMedia.holds(fd) else { return }
        #expect(try autoEngine(in: "/var/tmp") == "io_uring")
    }

    @Test func memoryDevicesAreKnownByName() {
        for name in ["ram0", "ram15", "pmem0", "pmem1p2"] { #expect(MemoryBackedMedia.isMemoryDevice(name), "\(name)") }
        for name in ["nvme0n1", "vda", "loop0", "ramdisk", "pmemx", "sda1"] { #expect(!MemoryBackedMedia.isMemoryDevice(name), "\(name)") }
    }

    /// The root file system's own block device resolves to a name through /sys.
    @Test func blockDeviceNamesComeFromSysfs() throws {
        var st = stat()
        try #require(stat("/", &st) == 0)
        let name = try #require(MemoryBackedMedia.blockDeviceName(st.st_dev))
        #expect(!name.isEmpty && !MemoryBackedMedia.isMemoryDevice(name))
    }
}
