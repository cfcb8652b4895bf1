import Glibc

/// Where `--metrics` listens: a numeric IPv4 or IPv6 address and a port, as
/// `127.0.0.1:9464` or `[::1]:9464`. Port 0 lets the kernel choose (the daemon
/// logs the port it got). Names are refused: a metrics endpoint bound to
/// whatever a resolver says is not what an operator means.
public struct MetricsAddress: Equatable, Sendable, CustomStringConvertible {
    public enum Family: Sendable { case ipv4, ipv6 }
    public let host: String
    public let port: Int
    public let family: Family

    public init(host: String, port: Int, family: Family) {
        self.host = host
        self.port = port
        self.family = family
    }

    public var description: String { family == .ipv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Parses `ADDRESS:PORT`; the error says what is wrong with the text.
    public static func parse(_ text: String) throws(MetricsAddressError) -> MetricsAddress {
        let host: Substring, portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw MetricsAddressError(text, "an IPv6 address needs its closing ']'") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.first == ":" else { throw MetricsAddressError(text, "expected ':PORT' after ']'") }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw MetricsAddressError(text, "expected ADDRESS:PORT, like 127.0.0.1:9464 or [::1]:9464") }
            host = text[..<colon]
            guard !host.contains(":") else { throw MetricsAddressError(text, "put an IPv6 address in brackets, like [::1]:9464") }
            portText = text[text.index(after: colon)...]
        }
        guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let port = Int(portText), port <= 65535 else {
            throw MetricsAddressError(text, "the port must be a number 0...65535")
        }
        let family: Family = text.hasPrefix("[") ? .ipv6 : .ipv4
        guard isNumericAddress(String(host), family) else {
            throw MetricsAddressError(text, "'\(host)' is not a numeric \(family == .ipv6 ? "IPv6" : "IPv4") address")
        }
        return MetricsAddress(host: String(host), port: port, family: family)
    }

    static func isNumericAddress(_ host: String, _ family: Family) -> Bool {
        var storage = in6_addr()   // large enough for either family
        return host.withCString { inet_pton(family == .ipv6 ? AF_INET6 : AF_INET, $0, &storage) } == 1
    }
}

public struct MetricsAddressError: Error, CustomStringConvertible, Equatable {
    public let text: String
    public let reason: String
    init(_ text: String, _ reason: String) {
        self.text = text
        self.reason = reason
    }
    public var description: String { "--metrics \(text): \(reason)" }
}
