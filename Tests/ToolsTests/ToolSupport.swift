import Foundation
import Glibc
import Testing
import PMFSMetadata

/// Runs the built mkfs.pmfs and pmfs-inspect as a user would.
enum Tool {
    /// SwiftPM puts the test binary (pmfsPackageTests.xctest) in the same
    /// directory as the executable products it built.
    static let productsDirectory: String = {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let exe = n > 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
        return (exe as NSString).deletingLastPathComponent
    }()

    struct Result {
        var status: Int32
        var stdout: Data
        var stderr: String
        var output: String { String(decoding: stdout, as: UTF8.self) }
    }

    /// Runs `name` from the products directory with PMEM_IS_PMEM_FORCE=1 (pools
    /// are on /dev/shm); output goes through files, so a large stdout cannot block.
    static func run(_ name: String, _ arguments: [String]) throws -> Result {
        Environment.setUp()
        let path = productsDirectory + "/" + name
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw ToolMissing(description: "\(path) not built: run `swift build` (tools/test.sh does) before the tests")
        }
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("pmfs-tool-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let out = scratch.appendingPathComponent("stdout"), err = scratch.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env["PMEM_IS_PMEM_FORCE"] = "1"
        process.environment = env
        process.standardInput = FileHandle.nullDevice
        let outHandle = try FileHandle(forWritingTo: out), errHandle = try FileHandle(forWritingTo: err)
        process.standardOutput = outHandle
        process.standardError = errHandle
        // Not while another test thread is opening a pool (see PoolDescriptors).
        try PoolDescriptors.withSpawnLock { try process.run() }
        process.waitUntilExit()
        try outHandle.close()
        try errHandle.close()
        return Result(status: process.terminationStatus, stdout: try Data(contentsOf: out),
                      stderr: String(decoding: try Data(contentsOf: err), as: UTF8.self))
    }

    struct ToolMissing: Error, CustomStringConvertible { var description: String }
}

enum Environment {
    /// Emulated PM on /dev/shm for the pools this process opens itself.
    private static let once: Void = { setenv("PMEM_IS_PMEM_FORCE", "1", 1) }()
    static func setUp() { _ = once }
}

/// A directory on /dev/shm for one test's pool and data file, removed at the end.
final class Scratch {
    let directory: String

    init() throws {
        Environment.setUp()
        directory = "/dev/shm/pmfs-tools-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
    }

    func path(_ name: String) -> String { directory + "/" + name }

    deinit { try? FileManager.default.removeItem(atPath: directory) }
}

/// Makes a file system with the built mkfs.pmfs; expects success.
@discardableResult
func mkfs(pool: String, data: String, _ extra: [String] = []) throws -> Tool.Result {
    let r = try Tool.run("mkfs.pmfs", ["--pool", pool, "--data", data] + extra)
    #expect(r.status == 0, "mkfs.pmfs failed: \(r.stderr)")
    return r
}

/// Expects a failure with exit code 1 and one line "TOOL: ..." mentioning `text`.
func expectFailure(_ r: Tool.Result, tool: String, mentioning text: String,
                   sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(r.status == 1, "exit status \(r.status), stderr: \(r.stderr)", sourceLocation: sourceLocation)
    let lines = r.stderr.split(separator: "\n")
    #expect(lines.count == 1, "stderr: \(r.stderr)", sourceLocation: sourceLocation)
    #expect(r.stderr.hasPrefix("\(tool): "), "stderr: \(r.stderr)", sourceLocation: sourceLocation)
    #expect(r.stderr.contains(text), "stderr should mention '\(text)': \(r.stderr)", sourceLocation: sourceLocation)
}

func fileSize(_ path: String) -> UInt64? {
    var st = stat()
    return stat(path, &st) == 0 ? UInt64(st.st_size) : nil
}

func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

func name(_ s: String) -> FileName { try! FileName(s) }
