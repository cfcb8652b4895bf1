import Glibc
import PMFSConcurrency

/// How a child ended.
enum ChildEnd: Equatable, CustomStringConvertible {
    case exited(Int32), signalled(Int32), timedOut
    var description: String {
        switch self {
        case .exited(let c): return "exit \(c)"
        case .signalled(let s): return "signal \(s)"
        case .timedOut: return "timed out"
        }
    }
}

/// Runs `path` with `arguments`, stdout and stderr to `output` (or /dev/null),
/// killing it (SIGKILL) after `timeout` seconds.
func spawn(_ path: String, _ arguments: [String], timeout: Double, output: String = "/dev/null") -> ChildEnd {
    guard let pid = start(path, arguments, output: output) else { return .exited(127) }
    return wait(pid, timeout: timeout, killing: true)
}

/// Starts `path` with `arguments` in the background; nil if it could not be run.
func start(_ path: String, _ arguments: [String], output: String = "/dev/null") -> pid_t? {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
    defer { for a in argv { free(a) } }
    var pid: pid_t = 0
    return posix_spawn(&pid, path, &actions, nil, argv, environ) == 0 ? pid : nil
}

/// How `pid` ended within `timeout` seconds; `.timedOut` if it had not (and
/// then it was killed with SIGKILL and reaped when `killing`).
func wait(_ pid: pid_t, timeout: Double, killing: Bool) -> ChildEnd {
    let deadline = now() + timeout
    var status: Int32 = 0
    while true {
        let r = waitpid(pid, &status, WNOHANG)
        if r == pid { break }
        if now() > deadline {
            if killing {
                kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
            }
            return .timedOut
        }
        usleep(2000)
    }
    // WIFEXITED / WTERMSIG are macros: decode the status by hand.
    let signal = status & 0x7f
    return signal == 0 ? .exited((status >> 8) & 0xff) : .signalled(signal)
}

/// Seconds on the monotonic clock.
func now() -> Double { Double(monotonicNanoseconds()) / 1e9 }

func selfExecutable() -> String {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    return n > 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
}

/// An executable built beside this one (fsck.pmfs).
func siblingExecutable(_ name: String) -> String {
    let me = selfExecutable()
    let dir = me.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    return "\(dir)/\(name)"
}

func readHeaderBlock(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw FuzzError("cannot open \(path)") }
    defer { close(fd) }
    var block = [UInt8](repeating: 0, count: 4096)
    _ = block.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 4096, 0) }
    return block
}

func readText(_ path: String) -> String {
    guard let f = fopen(path, "r") else { return "" }
    defer { fclose(f) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&buffer, 1, buffer.count, f)
        if n == 0 { break }
        out += buffer[..<n]
    }
    return String(decoding: out, as: UTF8.self).trimmingCharacters(in: "\n")
}

func writeText(_ path: String, _ text: String) {
    guard let f = fopen(path, "w") else { return }
    fputs(text + "\n", f)
    fclose(f)
}

func removeTree(_ dir: String) {
    guard let d = opendir(dir) else { return }
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        if name != "." && name != ".." { unlink("\(dir)/\(name)") }
    }
    closedir(d)
    rmdir(dir)
}

extension String {
    func trimmingCharacters(in c: Character) -> String {
        var s = Substring(self)
        while s.last == c { s = s.dropLast() }
        return String(s)
    }
}

func fileSize(_ path: String) -> UInt64 {
    var st = stat()
    return stat(path, &st) == 0 ? UInt64(st.st_size) : 0
}
