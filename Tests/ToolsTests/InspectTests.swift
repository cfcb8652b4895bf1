import Foundation
import Glibc
import Testing
import PMFSMetadata

/// A file system made by mkfs.pmfs and filled through MetadataStore:
///   /.hidden  /abs -> /dir/sub  /link -> dir/file.txt  /dir/sub/  /dir/file.txt
/// file.txt has blocks 0-1 written, 2 a hole, 3 written, 4 unwritten (with
/// garbage on the device), and a size ending 100 bytes into block 4.
final class PopulatedFileSystem {
    let scratch: Scratch
    let pool: String
    let data: String
    let uuid: [UInt8]
    let file: InodeAttributes
    let expectedContents: [UInt8]
    static let size: UInt64 = 4 * 4096 + 100

    init() throws {
        scratch = try Scratch()
        pool = scratch.path("fs.pool")
        data = scratch.path("data.img")
        try mkfs(pool: pool, data: data, ["--data-size", "8M", "--label", "inspect-me", "-q"])
        let header = try #require(try DataDeviceHeader.read(from: data))
        uuid = header.fsUUID
        let store = try MetadataStore.open(poolPath: pool, dataDevice: header)
        let owner = { (mode: UInt32) in NewInode(mode: mode, uid: 1000, gid: 1000) }
        let dir = try store.mkdir(1, name("dir"), owner(UInt32(S_IFDIR) | 0o755))
        _ = try store.mkdir(dir.ino, name("sub"), owner(UInt32(S_IFDIR) | 0o700))
        _ = try store.create(1, name(".hidden"), owner(UInt32(S_IFREG) | 0o600))
        let f = try store.create(dir.ino, name("file.txt"), owner(UInt32(S_IFREG) | 0o644))
        _ = try store.symlink(1, name("link"), target: Array("dir/file.txt".utf8), uid: 0, gid: 0)
        _ = try store.symlink(1, name("abs"), target: Array("/dir/sub".utf8), uid: 0, gid: 0)
        try store.setxattr(f.ino, Array("user.color".utf8), Array("blue".utf8))
        try store.setxattr(f.ino, Array("user.bin".utf8), [0, 1, 2])

        let written = try store.allocateBlocks(f.ino, start: 0, count: 2) + store.allocateBlocks(f.ino, start: 3, count: 1)
        let unwritten = try store.allocateBlocks(f.ino, start: 4, count: 1, unwritten: true)
        file = try store.setattr(f.ino, AttributeChanges(size: Self.size))
        try store.close()

        // Write the blocks straight into the data file where the engine put them.
        let fd = open(data, O_RDWR)
        #expect(fd >= 0)
        defer { close(fd) }
        func pattern(_ block: UInt64) -> [UInt8] { (0..<4096).map { UInt8(truncatingIfNeeded: Int(block) * 31 + $0 % 251 + 1) } }
        for segment in written {
            let device = try #require(segment.deviceBlock)
            for i in 0..<segment.length {
                let bytes = pattern(segment.fileBlock + i)
                #expect(pwrite(fd, bytes, bytes.count, off_t((device + i) * 4096)) == 4096)
            }
        }
        for segment in unwritten {
            let device = try #require(segment.deviceBlock)
            let garbage = [UInt8](repeating: 0xEE, count: 4096)
            #expect(pwrite(fd, garbage, 4096, off_t(device * 4096)) == 4096)
        }
        let zeros = [UInt8](repeating: 0, count: 4096)
        expectedContents = Array((pattern(0) + pattern(1) + zeros + pattern(3) + zeros).prefix(Int(Self.size)))
    }

    func inspect(_ arguments: String...) throws -> Tool.Result {
        try Tool.run("pmfs-inspect", [arguments[0], "--pool", pool] + arguments.dropFirst())
    }
}

@Suite struct InspectTests {
    @Test func infoShowsTheSuperblockAndChangesNothing() throws {
        let fs = try PopulatedFileSystem()
        let r = try fs.inspect("info")
        #expect(r.status == 0, "\(r.stderr)")
        // Compare with runs of spaces squeezed: the column widths are cosmetic.
        let lines = r.output.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
        for expected in ["UUID: \(formatUUID(fs.uuid))", "label: inspect-me", "format version: 2", "state: clean",
                         "block size: 4096", "data blocks: 2048", "mount count: 2", "orphan inodes: 0", "free blocks: 2043 of 2047"] {
            #expect(lines.contains { $0.hasPrefix(expected) }, "missing '\(expected)' in:\n\(r.output)")
        }
        // With --data, the data device is checked against the pool.
        let checked = try fs.inspect("info", "--data", fs.data)
        #expect(checked.status == 0 && checked.output.contains("matches (2048 blocks)"), "\(checked.stderr)")
        let other = try Scratch()
        try mkfs(pool: other.path("o.pool"), data: other.path("o.img"), ["--data-size", "8M", "-q"])
        expectFailure(try fs.inspect("info", "--data", other.path("o.img")), tool: "pmfs-inspect", mentioning: "wrong data device")
        // Inspecting is not a mount.
        let again = try fs.inspect("info")
        #expect(again.output.contains("mount count:      2"))
        #expect(again.output.contains("state:            clean"))
    }

    @Test func dfCountsBlocksAndInodes() throws {
        let fs = try PopulatedFileSystem()
        let r = try fs.inspect("df")
        #expect(r.status == 0, "\(r.stderr)")
        let rows = Dictionary(uniqueKeysWithValues: r.output.split(separator: "\n").compactMap { line -> (String, [String])? in
            let cells = line.split(separator: " ").map(String.init)
            return cells.count == 5 ? (cells[0], Array(cells[1...])) : nil
        })
        #expect(rows["blocks"]?.prefix(3) == ["2047", "4", "2043"])
        let inodes = try #require(rows["inodes"])
        #expect(inodes[1] == "7")   // root, dir, sub, .hidden, file.txt, link, abs
        #expect(UInt64(inodes[0])! == UInt64(inodes[1])! + UInt64(inodes[2])!)
    }

    @Test func dfAndStatShowBlocksSharedByClones() throws {
        let fs = try PopulatedFileSystem()
        #expect(try fs.inspect("df").output.contains("shared blocks: none"))
        let header = try #require(try DataDeviceHeader.read(from: fs.data))
        let store = try MetadataStore.open(poolPath: fs.pool, dataDevice: header)
        let copy = try store.create(1, try FileName("copy"), NewInode(mode: UInt32(S_IFREG) | 0o644))
        // file.txt's blocks 0-1 (written) and 2 (a hole) into the copy: two blocks get a second owner.
        try store.cloneBlocks(from: fs.file.ino, block: 0, to: copy.ino, block: 0, count: 3, targetSize: 3 * 4096)
        try store.close()
        let df = try fs.inspect("df")
        #expect(df.status == 0, "\(df.stderr)")
        #expect(df.output.contains("shared blocks: 2 (8 KiB) in 1 run(s), 4 references; clones save 2 blocks (8 KiB)"), "\(df.output)")
        let stat = try fs.inspect("stat", "/copy").output
        #expect(stat.contains("Shared: 2 of 2 mapped block(s) shared with clones"), "\(stat)")
        #expect(stat.contains("(shared)"))
        #expect(try fs.inspect("stat", "/dir/file.txt").output.contains("Shared: 2 of 4 mapped block(s)"))
    }

    @Test func lsListsSortedNamesLongFormatAndHiddenOnes() throws {
        let fs = try PopulatedFileSystem()
        #expect(try fs.inspect("ls", "/").output == "abs\ndir\nlink\n")
        #expect(try fs.inspect("ls", "-a", "/").output == ".\n..\n.hidden\nabs\ndir\nlink\n")
        #expect(try fs.inspect("ls", "dir").output == "file.txt\nsub\n")
        #expect(try fs.inspect("ls", "/dir/file.txt").output == "file.txt\n")

        let long = try fs.inspect("ls", "-l", "/dir").output.split(separator: "\n").map(String.init)
        #expect(long.count == 2)
        let fileLine = try #require(long.first { $0.hasSuffix(" file.txt") })
        let cells = fileLine.split(separator: " ").map(String.init)
        #expect(cells[0] == "\(fs.file.ino)" && cells[1] == "-rw-r--r--" && cells[2] == "1" && cells[3] == "1000" && cells[4] == "1000"
                && cells[5] == "\(PopulatedFileSystem.size)")
        #expect(long.contains { $0.contains(" drwx------ ") && $0.hasSuffix(" sub") })
        let root = try fs.inspect("ls", "-l", "/").output
        #expect(root.contains(" link -> dir/file.txt\n"))
        #expect(root.contains(" abs -> /dir/sub\n"))
    }

    @Test func statShowsEveryAttribute() throws {
        let fs = try PopulatedFileSystem()
        let r = try fs.inspect("stat", "/dir/file.txt")
        #expect(r.status == 0, "\(r.stderr)")
        let out = r.output
        #expect(out.contains("Type: regular file"))
        #expect(out.contains("Inode: \(fs.file.ino)   Generation: \(fs.file.generation)"))
        #expect(out.contains("Mode: 0644 (-rw-r--r--)   Links: 1"))
        #expect(out.contains("Uid: 1000   Gid: 1000"))
        #expect(out.contains("Size: \(PopulatedFileSystem.size)   Blocks: 32 (512-byte units)"))
        #expect(out.contains("Xattrs: user.color, user.bin"))
        for time in ["Access", "Modify", "Change", "Birth"] {
            let line = try #require(out.split(separator: "\n").first { $0.contains("\(time): ") })
            // Nanoseconds are shown: "HH:MM:SS.nnnnnnnnn".
            #expect(line.contains(try Regex(#":\d\d\.\d{9} "#)), "\(line)")
        }
        #expect(out.contains("file blocks 2..<3: hole"))
        #expect(out.contains("(unwritten)"))
        let link = try fs.inspect("stat", "/link").output
        #expect(link.contains("File: /link -> dir/file.txt"))
        #expect(link.contains("Type: symbolic link"))
    }

    @Test func treeShowsTheHierarchyAndSymlinkTargets() throws {
        let fs = try PopulatedFileSystem()
        let r = try fs.inspect("tree")
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.output == """
            /
            ├── .hidden
            ├── abs -> /dir/sub
            ├── dir/
            │   ├── file.txt
            │   └── sub/
            └── link -> dir/file.txt

            2 directories, 4 files

            """)
        #expect(try fs.inspect("tree", "/dir").output.contains("1 directory, 1 file"))
    }

    @Test func catReadsBlocksFromTheDataDeviceWithHolesAsZeros() throws {
        let fs = try PopulatedFileSystem()
        let r = try fs.inspect("cat", "--data", fs.data, "/dir/file.txt")
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.count == fs.expectedContents.count)
        #expect(Array(r.stdout) == fs.expectedContents)
        // cat follows symlinks, relative and absolute.
        #expect(Array(try fs.inspect("cat", "--data", fs.data, "/link").stdout) == fs.expectedContents)
        let empty = try fs.inspect("cat", "--data", fs.data, ".hidden")
        #expect(empty.status == 0 && empty.stdout.isEmpty)
        expectFailure(try fs.inspect("cat", "--data", fs.data, "/abs"), tool: "pmfs-inspect", mentioning: "Is a directory")
    }

    @Test func xattrShowsNamesAndValues() throws {
        let fs = try PopulatedFileSystem()
        let r = try fs.inspect("xattr", "/dir/file.txt")
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.output == "user.color=\"blue\"\nuser.bin=0x000102\n")
        #expect(try fs.inspect("xattr", "/dir").output.isEmpty)
    }

    @Test func errorsAreOneClearLineWithExitCodeOne() throws {
        let fs = try PopulatedFileSystem()
        let missing = fs.scratch.path("nothing.pool")
        for sub in ["info", "df", "tree"] {
            expectFailure(try Tool.run("pmfs-inspect", [sub, "--pool", missing]), tool: "pmfs-inspect", mentioning: "No such file or directory")
            expectFailure(try Tool.run("pmfs-inspect", [sub, "--pool", fs.data]), tool: "pmfs-inspect", mentioning: "is not a pmfs metadata pool")
        }
        expectFailure(try fs.inspect("stat", "/dir/nope"), tool: "pmfs-inspect", mentioning: "/dir/nope: No such file or directory")
        expectFailure(try fs.inspect("ls", "/nope"), tool: "pmfs-inspect", mentioning: "No such file or directory")
        expectFailure(try fs.inspect("ls", "/dir/file.txt/x"), tool: "pmfs-inspect", mentioning: "Not a directory")
        expectFailure(try fs.inspect("ls", "/abs/x"), tool: "pmfs-inspect", mentioning: "/abs is a symbolic link")
        expectFailure(try fs.inspect("xattr", "/nope"), tool: "pmfs-inspect", mentioning: "No such file or directory")

        // cat checks the data device against the pool.
        let other = try Scratch()
        try mkfs(pool: other.path("o.pool"), data: other.path("o.img"), ["--data-size", "8M", "-q"])
        expectFailure(try fs.inspect("cat", "--data", other.path("o.img"), "/dir/file.txt"), tool: "pmfs-inspect", mentioning: "wrong data device")
        expectFailure(try fs.inspect("cat", "--data", fs.scratch.path("none.img"), "/dir/file.txt"), tool: "pmfs-inspect", mentioning: "No such file or directory")
    }
}
