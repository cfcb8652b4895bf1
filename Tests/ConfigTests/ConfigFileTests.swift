import Foundation
import PMFSServer
@testable import Pmfsd
import Testing

/// pmfsd's configuration file: what it reads, what it refuses (with the line),
/// how flags override it. Tests/mount/test_config.py runs a daemon with it.
struct ConfigFileTests {
    static let path = "/etc/pmfs/t.yaml"

    func parse(_ text: String) throws(ConfigFileError) -> ConfigFile { try ConfigFile.parse(text, path: Self.path) }

    /// The error a text is refused with.
    func refusal(_ text: String) -> ConfigFileError? {
        do { _ = try parse(text); return nil } catch { return error }
    }

    static let full = """
        # a comment
        pool: /dev/shm/p.pool
        data: /var/lib/pmfs/d.img
        mount: /mnt/pmfs
        fuse-transport: device
        queues: 2
        writeback: yes
        cache-size: 1G
        log-level: debug
        guests:
          vm1:
            socket: /run/pmfs/vm1.sock
            export: /vms/vm1
            uid-map: ["0:100000:65536", "65536:200000:10"]
            gid-map: 0:100000:65536
            devices: deny
            cache: none
            locks: local
          tools:
            socket: /run/pmfs/tools.sock
            read-only: true
          activated:
            fd: 3
        """

    @Test func everyKeyIsRead() throws {
        let file = try parse(Self.full)
        #expect(file.string("pool") == "/dev/shm/p.pool" && file.string("mount") == "/mnt/pmfs")
        #expect(file.int("queues") == 2 && file.bool("writeback") == true && file.string("cache-size") == "1G")
        #expect(file.guests.map(\.name) == ["vm1", "tools", "activated"])
        let vm1 = file.guests[0]
        #expect(vm1.listener == .path("/run/pmfs/vm1.sock") && vm1.line == 11)
        #expect(vm1.spec.policy.path == "/vms/vm1" && !vm1.spec.policy.readOnly && vm1.spec.cache == PMFSOperations.CachePolicy.none && vm1.spec.locks == "local")
        #expect(vm1.spec.policy.uids.ranges.count == 2 && vm1.spec.policy.gids.ranges.count == 1)
        #expect(vm1.spec.namesDevices && !vm1.spec.policy.devices && !vm1.spec.namesSetID)
        #expect(file.guests[1].spec.policy.readOnly && file.guests[1].spec.policy.path == "/")
        #expect(file.guests[2].listener == .descriptor(3))
        #expect(file.lines["guests.vm1.devices"] == 16)
    }

    @Test func anEmptyFileSetsNothing() throws {
        #expect(try parse("").values.isEmpty)
        #expect(try parse("# only a comment\n").guests.isEmpty)
    }

    @Test func errorsNameTheLineTheKeyAndTheReason() {
        let cases: [(String, String)] = [
            ("pool: /p\nqueus: 2\n", "/etc/pmfs/t.yaml:2: queus: unknown key"),
            ("queues: many\n", "/etc/pmfs/t.yaml:1: queues: expected an integer"),
            ("writeback: sometimes\n", "/etc/pmfs/t.yaml:1: writeback: expected true or false"),
            ("pool:\n", "/etc/pmfs/t.yaml:1: pool: expected a string"),
            ("pool: [a, b]\n", "/etc/pmfs/t.yaml:1: pool: expected a string"),
            ("guests: /run/x.sock\n", "/etc/pmfs/t.yaml:1: guests: a mapping of guest names"),
            ("guests:\n  a:\n    export: /\n", "/etc/pmfs/t.yaml:2: guests.a: no socket: PATH or fd: N"),
            ("guests:\n  a:\n    socket: /s\n    fd: 4\n", "/etc/pmfs/t.yaml:4: guests.a.fd: a guest listens on one socket or one fd, not both"),
            ("guests:\n  a:\n    fd: 1\n", "/etc/pmfs/t.yaml:3: guests.a.fd: a descriptor number of 3 or more"),
            ("guests:\n  a:\n    socket: s.sock\n", "/etc/pmfs/t.yaml:3: guests.a.socket: an absolute path"),
            ("guests:\n  a:\n    socket: /s\n    setid: maybe\n", "/etc/pmfs/t.yaml:4: guests.a.setid: setid= must be allow or strip"),
            ("guests:\n  a:\n    socket: /s\n    export: vms\n", "/etc/pmfs/t.yaml:4: guests.a.export: export= needs an absolute path"),
            ("guests:\n  a:\n    socket: /s\n    readonly: true\n", "/etc/pmfs/t.yaml:4: guests.a.readonly: unknown key"),
            ("guests:\n  a:\n    socket: /s\n    uid-map: [\"0:1:10\", \"5:100:10\"]\n", "/etc/pmfs/t.yaml:2: guests.a: "),
            ("guests:\n  a:\n    socket: /s\n  b:\n    socket: /s\n", "/etc/pmfs/t.yaml:4: guests.b: socket /s is guest a's too"),
            ("guests:\n  a b:\n    socket: /s\n", "/etc/pmfs/t.yaml:2: guests.a b: a guest's name is"),
            ("- pool\n", "/etc/pmfs/t.yaml:1: the file must be a mapping"),
        ]
        for (text, expected) in cases {
            let said = refusal(text).map { "\($0)" }
            #expect(said?.hasPrefix(expected) == true, "\(text.debugDescription): \(said ?? "accepted")")
        }
    }

    @Test func syntaxErrorsNameTheLineAndColumn() throws {
        let e = try #require(refusal("pool: /p\nguests:\n  a:\n    socket: [unclosed\n"))
        #expect(e.line != nil && e.column != nil && e.reason.hasPrefix("YAML: "), "\(e)")
        #expect("\(e)".split(separator: "\n").count == 1, "one line for the log: \(e)")
        let twice = try #require(refusal("pool: /a\npool: /b\n"))
        #expect(twice.reason.contains("'pool' given twice"), "\(twice)")
    }

    @Test func theExampleFileParses() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let file = try ConfigFile.load(path: root + "/tools/systemd/example.yaml")
        #expect(file.string("pool") != nil && file.string("data") != nil && file.guests.map(\.listener) == [.descriptor(3)])
    }

    func settings(_ arguments: [String], _ text: String?) throws -> DaemonSettings {
        try DaemonSettings.make(try Pmfsd.parse(arguments), file: text.map { try parse($0) })
    }

    @Test func flagsOverrideTheFileAndDefaultsFillIn() throws {
        let s = try settings(["--queues", "3", "--no-writeback", "--socket", "/run/pmfs/tools.sock,export=/other"], Self.full)
        #expect(s.guest.queues == 3 && !s.guest.writeback && s.pool == "/dev/shm/p.pool" && s.fuseTransport == .device && s.cacheBytes == 1 << 30)
        #expect(s.workers == 4 && s.guest.tag == "pmfs" && s.logLevel == .debug)
        // The flag's socket replaces the file's guest on that path.
        let tools = s.guests.filter { $0.listener == .path("/run/pmfs/tools.sock") }
        #expect(tools.count == 1 && tools[0].spec.policy.path == "/other" && tools[0].origin == "command line")
        #expect(s.guests.first?.origin == "config (vm1)")
        // A flag wins even over a bad value in the file.
        #expect(try settings(["--cache-size", "64M"], "pool: /p\ndata: /d\ncache-size: huge\n").cacheBytes == 64 << 20)
    }

    @Test func badValuesNameTheFlagOrTheLine() {
        func said(_ arguments: [String], _ text: String?) -> String {
            do { _ = try settings(arguments, text); return "accepted" } catch { return "\(error)" }
        }
        #expect(said(["--queues", "65"], "pool: /p\ndata: /d\n").contains("--queues: must be 1...64"))
        #expect(said([], "pool: /p\ndata: /d\nqueues: 0\n").hasPrefix("/etc/pmfs/t.yaml:3: queues: must be 1...64"))
        #expect(said([], "pool: /p\ndata: /d\nlocks: everywhere\n").hasPrefix("/etc/pmfs/t.yaml:3: locks: must be auto, shared or local"))
        #expect(said([], "pool: /p\ndata: /d\nsocket-group: no-such-group-here\n").hasPrefix("/etc/pmfs/t.yaml:3: socket-group: no group"))
        #expect(said([], "data: /d\n").contains("--pool and --data are required (or pool: and data: in /etc/pmfs/t.yaml)"))
        #expect(said(["--pool", "/p", "--data", "/d"], nil) == "accepted")
    }

    @Test func theLocksOfAutoAreSharedWhenAReloadMayAddGuests() throws {
        let one = try settings([], "pool: /p\ndata: /d\nguests:\n  a:\n    socket: /s\n")
        #expect(one.guestLocks(listeners: 1, reloadable: false) == "local")
        #expect(one.guestLocks(listeners: 1, reloadable: true) == "shared")
    }

    @Test func planningSettlesSharingAcrossTheFileAndTheControlSocketsListeners() throws {
        let s = try settings([], "pool: /p\ndata: /d\nguests:\n  a:\n    socket: /a\n    export: /vms\n  b:\n    socket: /b\n    export: /vms/b\n  c:\n    socket: /c\n    export: /c\n")
        let plan = try s.plan(others: [], reloadable: true)
        #expect(plan.map { $0.spec.policy.devices } == [false, false, true])
        let withOther = try s.plan(others: [try GuestListenerSpec.parse("9,export=/c/x")], reloadable: true)
        #expect(withOther.map { $0.spec.policy.setID } == [false, false, false])
    }
}
