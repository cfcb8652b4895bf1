// Attributes as ls and stat(1) print them, shared by pmfs-inspect (offline
// pools) and pmfsctl (a served one).
import Glibc

public enum AttributeText {
    /// "drwxr-xr-x": the type letter, then rwx for owner, group, others with
    /// setuid, setgid and sticky in place of their x.
    public static func mode(_ mode: UInt32) -> String {
        var s = String(typeLetter(mode))
        let rwx: [Character] = ["r", "w", "x"]
        for i in 0..<9 {
            let bit = UInt32(1) << UInt32(8 - i)
            var c: Character = mode & bit != 0 ? rwx[i % 3] : "-"
            if i == 2 && mode & 0o4000 != 0 { c = c == "x" ? "s" : "S" }
            if i == 5 && mode & 0o2000 != 0 { c = c == "x" ? "s" : "S" }
            if i == 8 && mode & 0o1000 != 0 { c = c == "x" ? "t" : "T" }
            s.append(c)
        }
        return s
    }

    /// "regular file", "directory", "symbolic link", ... as stat(1) names them.
    public static func typeName(_ mode: UInt32) -> String {
        switch mode & UInt32(S_IFMT) {
        case UInt32(S_IFREG): return "regular file"
        case UInt32(S_IFDIR): return "directory"
        case UInt32(S_IFLNK): return "symbolic link"
        case UInt32(S_IFIFO): return "fifo"
        case UInt32(S_IFSOCK): return "socket"
        case UInt32(S_IFCHR): return "character device"
        case UInt32(S_IFBLK): return "block device"
        default: return "unknown"
        }
    }

    private static func typeLetter(_ mode: UInt32) -> Character {
        switch mode & UInt32(S_IFMT) {
        case UInt32(S_IFDIR): return "d"
        case UInt32(S_IFLNK): return "l"
        case UInt32(S_IFIFO): return "p"
        case UInt32(S_IFSOCK): return "s"
        case UInt32(S_IFCHR): return "c"
        case UInt32(S_IFBLK): return "b"
        case UInt32(S_IFREG): return "-"
        default: return "?"
        }
    }

    /// The permission bits in octal, four digits: "0644".
    public static func permissions(_ mode: UInt32) -> String {
        let digits = String(mode & 0o7777, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    /// Local time with nanoseconds and zone, as stat(1) prints it.
    public static func time(_ seconds: Int64, _ nanoseconds: UInt32) -> String {
        var t = time_t(seconds)
        var parts = tm()
        guard localtime_r(&t, &parts) != nil else { return "\(seconds).\(nanoseconds)" }
        var buffer = [CChar](repeating: 0, count: 64)
        let n = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M:%S", &parts)
        var zone = [CChar](repeating: 0, count: 16)
        _ = strftime(&zone, zone.count, "%z", &parts)
        let date = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let z = String(decoding: zone.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let nanos = String(nanoseconds)
        return "\(date).\(String(repeating: "0", count: max(0, 9 - nanos.count)))\(nanos) \(z)"
    }

    /// A name (or link target) as text: valid UTF-8 stays, with a backslash
    /// doubled and control characters as \xNN; of bytes that are not UTF-8,
    /// printable ASCII stays and the rest (a backslash too) become \xNN.
    public static func displayName(_ bytes: [UInt8]) -> String {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            return bytes.map { $0 >= 0x20 && $0 < 0x7F && $0 != 0x5C ? String(UnicodeScalar($0)) : hexEscape($0) }.joined()
        }
        var out = ""
        for scalar in text.unicodeScalars {
            if scalar.value < 0x20 || scalar.value == 0x7F { out += hexEscape(UInt8(scalar.value)) }
            else if scalar == "\\" { out += "\\\\" }
            else { out.unicodeScalars.append(scalar) }
        }
        return out
    }

    private static func hexEscape(_ byte: UInt8) -> String {
        let digits = String(byte, radix: 16)
        return "\\x" + (digits.count == 1 ? "0" + digits : digits)
    }

    /// A device number's major and minor (glibc's encoding).
    public static func major(_ dev: UInt64) -> UInt64 { ((dev >> 32) & 0xFFFF_F000) | ((dev >> 8) & 0xFFF) }
    public static func minor(_ dev: UInt64) -> UInt64 { ((dev >> 12) & 0xFFFF_FF00) | (dev & 0xFF) }
}
