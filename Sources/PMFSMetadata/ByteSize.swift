/// Sizes as people write them on command lines ("4096", "64K", "2G", "1TiB")
/// and as tools print them ("1.5 GiB"). Shared by mkfs.pmfs, pmfs-inspect and pmfsd.
public enum ByteSize {
    /// A whole number with an optional K/M/G/T suffix (powers of 1024, "B"/"iB"
    /// allowed after it); nil if malformed, zero or too large.
    public static func parse(_ text: String) -> UInt64? {
        var digits = Substring(text.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
        for suffix in ["iB", "B"] where digits.count > suffix.count && digits.hasSuffix(suffix) {
            digits = digits.dropLast(suffix.count)
            break
        }
        var unit: UInt64 = 1
        if let last = digits.last, let shift = ["K": 10, "M": 20, "G": 30, "T": 40][last.uppercased()] {
            unit = 1 << UInt64(shift)
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let n = UInt64(digits) else { return nil }
        let (bytes, overflow) = n.multipliedReportingOverflow(by: unit)
        return overflow || bytes == 0 ? nil : bytes
    }

    /// "512 bytes", "4 KiB", "1.5 GiB".
    public static func human(_ bytes: UInt64) -> String {
        let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes)
        var i = 0
        while value >= 1024 && i < units.count - 1 { value /= 1024; i += 1 }
        if i == 0 { return "\(bytes) bytes" }
        let tenths = (value * 10).rounded() / 10
        return tenths == tenths.rounded() ? "\(Int(tenths)) \(units[i])" : "\(tenths) \(units[i])"
    }
}
