import Glibc
@testable import Pmfsd
import Testing

/// How pmfsd reads libvirt's virtiofs command line (the launcher's own parts;
/// Tests/mount/test_control.py runs it against a daemon).
struct LibvirtLaunchTests {
    @Test func optionsMapToPmfsTerms() throws {
        let r = try LibvirtLauncher.parse(["source=/mnt/pmfs/vm1,cache=always,xattr,posix_lock,no_flock,sandbox=chroot", "announce_submounts"])
        #expect(r.source == "/mnt/pmfs/vm1" && r.cache == "always" && r.locks == "shared")
        #expect(r.notes.contains { $0.hasPrefix("sandbox=chroot ignored") })
        #expect(r.notes.contains { $0.hasPrefix("-o announce_submounts ignored") })
        let local = try LibvirtLauncher.parse(["source=/m", "no_posix_lock,no_flock", "cache=never"])
        #expect(local.locks == "local" && local.cache == "none")
        #expect(try LibvirtLauncher.parse(["source=/m"]).locks == nil)
    }

    @Test func aDoubledCommaIsPartOfThePath() throws {
        #expect(LibvirtLauncher.splitEscaped("source=/a,,b,cache=auto") == ["source=/a,b", "cache=auto"])
        #expect(try LibvirtLauncher.parse(["source=/x,,y,,,xattr"]).source == "/x,y,")
    }

    @Test func badOptionsAndDescriptorsAreRefused() {
        #expect(throws: (any Error).self) { try LibvirtLauncher.parse(["source=/m,cache=sometimes"]) }
        #expect(throws: (any Error).self) { try LibvirtLauncher.parse(["source="]) }
        #expect(throws: (any Error).self) { try LibvirtLauncher.descriptor([]) }
        #expect(throws: (any Error).self) { try LibvirtLauncher.descriptor(["3", "4"]) }
        #expect(throws: (any Error).self) { try LibvirtLauncher.descriptor(["3,export=/a"]) }
        #expect((try? LibvirtLauncher.descriptor(["3"])) == 3)
    }

    @Test func theSourceBecomesAnExportInsideTheMount() throws {
        var template = Array("/tmp/pmfs-launch-XXXXXX".utf8CString)
        let root = String(cString: mkdtemp(&template)!)
        defer { rmdir(root + "/vm1/disk"); rmdir(root + "/vm1"); unlink(root + "/link"); rmdir(root); rmdir(root + "-other") }
        mkdir(root + "/vm1", 0o755); mkdir(root + "/vm1/disk", 0o755)
        mkdir(root + "-other", 0o755)   // shares the mount's name as a prefix, but is outside it
        symlink(root + "/vm1", root + "/link")
        #expect(try LibvirtLauncher.export(source: root, mount: root) == "/")
        #expect(try LibvirtLauncher.export(source: root + "/vm1/", mount: root) == "/vm1")
        #expect(try LibvirtLauncher.export(source: root + "/link/disk", mount: root) == "/vm1/disk")
        #expect(try LibvirtLauncher.export(source: root + "/vm1/disk/..", mount: root + "/") == "/vm1")
        #expect(throws: (any Error).self) { try LibvirtLauncher.export(source: "/tmp", mount: root) }
        #expect(throws: (any Error).self) { try LibvirtLauncher.export(source: root + "-other", mount: root) }
        #expect(throws: (any Error).self) { try LibvirtLauncher.export(source: root + "/missing", mount: root) }
    }
}
