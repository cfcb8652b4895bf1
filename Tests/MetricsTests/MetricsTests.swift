import CFUSE
import CoreMetrics
import FUSEProtocol
import FUSETestSupport
import Glibc
import PMFSConcurrency
import Synchronization
import Testing
@testable import PMFSMetrics

@Suite struct MetricsAddressTests {
    @Test func takesNumericAddressesWithAPort() throws {
        #expect(try MetricsAddress.parse("127.0.0.1:9464") == MetricsAddress(host: "127.0.0.1", port: 9464, family: .ipv4))
        #expect(try MetricsAddress.parse("[::1]:9464") == MetricsAddress(host: "::1", port: 9464, family: .ipv6))
        #expect(try MetricsAddress.parse("0.0.0.0:0").port == 0)
        #expect(try MetricsAddress.parse("[::]:65535").description == "[::]:65535")
    }

    @Test(arguments: ["", "9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:+80",
                      "127.0.0.1:99999999999999999999", "localhost:9464", "::1:9464", "[::1]9464", "[::1:9464",
                      "[127.0.0.1]:9464", "1.2.3:80", "127.0.0.1:80x", "127.0.0.1: 80"])
    func refusesAnythingElse(_ text: String) {
        #expect(throws: MetricsAddressError.self) { try MetricsAddress.parse(text) }
    }
}

@Suite struct MetricNamingTests {
    @Test func namesFollowPrometheusConventions() {
        let metricName = /pmfs_[a-z0-9_]+/
        for name in PMFSMetricHelp.counters.keys {
            #expect(name.wholeMatch(of: metricName) != nil, "\(name)")
            #expect(name.hasSuffix("_total"), "counter \(name)")
        }
        for name in PMFSMetricHelp.gauges.keys {
            #expect(name.wholeMatch(of: metricName) != nil, "\(name)")
            #expect(!name.hasSuffix("_total"), "gauge \(name)")
        }
        for name in PMFSMetricHelp.histograms.keys { #expect(name.hasSuffix("_seconds"), "histogram \(name)") }
        // The names the layers use are the documented ones.
        for name in [FUSERequestMetrics.requestsName, FUSERequestMetrics.errorsName, FUSERequestMetrics.readBytesName,
                     FUSERequestMetrics.writtenBytesName, FUSERequestMetrics.latencyName] {
            #expect(PMFSMetricHelp.text[name] != nil, "\(name)")
        }
    }

    @Test func opcodeLabelsAreDistinctAndLowercase() {
        let names = Array(FUSERequestMetrics.opcodeNames.values)
        #expect(Set(names).count == names.count)
        #expect(!names.contains("other"))
        for n in names { #expect(n.wholeMatch(of: /[a-z_0-9]+/) != nil, "\(n)") }
    }
}

/// Answers GETATTR; everything else is ENOSYS (the protocol's defaults).
final class GetattrOnly: FUSEOperations, @unchecked Sendable {
    func getattr(_ r: FUSERequest, nodeid: UInt64, handle: UInt64?) throws -> (FUSEAttributes, Double) {
        (FUSEAttributes(ino: nodeid, size: 0, blocks: 0, atime: (0, 0), mtime: (0, 0), ctime: (0, 0), mode: 0o040755,
                        nlink: 2, uid: 0, gid: 0, rdev: 0, blockSize: 4096), 1)
    }
}

/// The value of the sample `series` (name and labels exactly as written) in a text exposition.
func sample(_ text: String, _ series: String) -> Double? {
    for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
        return Double(line.dropFirst(series.count + 1))
    }
    return nil
}

@Suite struct RegistryTests {
    @Test func requestsErrorsAndLatencyAreCountedPerSessionAndOpcode() {
        let registry = MetricsRegistry()
        let server = FUSEServer(operations: GetattrOnly(), metrics: FUSERequestMetrics(session: "vm\"1", factory: registry))
        let replies = ReplyCount()
        func send(_ op: fuse_opcode, _ body: [UInt8]) {
            fuseMessage(op, unique: 1, body: body).withUnsafeBytes { server.handle($0) { _ in replies.add() } }
        }
        send(FUSE_INIT, fuseInitArgument())
        for _ in 0..<3 { send(FUSE_GETATTR, [UInt8](repeating: 0, count: 16)) }
        send(FUSE_LOOKUP, Array("x".utf8) + [0])   // ENOSYS
        send(fuse_opcode(rawValue: 4000), [])         // unknown: "other", ENOSYS
        #expect(replies.count == 6)
        let text = String(decoding: registry.render(), as: UTF8.self)
        let s = #"session="vm\"1""#
        #expect(sample(text, #"pmfs_fuse_requests_total{\#(s),opcode="getattr"}"#) == 3)
        #expect(sample(text, #"pmfs_fuse_requests_total{\#(s),opcode="init"}"#) == 1)
        #expect(sample(text, #"pmfs_fuse_requests_total{\#(s),opcode="lookup"}"#) == 1)
        #expect(sample(text, #"pmfs_fuse_requests_total{\#(s),opcode="other"}"#) == 1)
        #expect(sample(text, #"pmfs_fuse_requests_total{\#(s),opcode="write"}"#) == 0)
        #expect(sample(text, #"pmfs_fuse_request_errors_total{\#(s),opcode="lookup"}"#) == 1)
        #expect(sample(text, #"pmfs_fuse_request_errors_total{\#(s),opcode="getattr"}"#) == 0)
        // Every request here is metadata: six in the histogram, in the +Inf bucket too.
        #expect(sample(text, #"pmfs_fuse_request_duration_seconds_count{\#(s),class="metadata"}"#) == 6)
        #expect(sample(text, #"pmfs_fuse_request_duration_seconds_bucket{\#(s),class="metadata",le="+Inf"}"#) == 6)
        #expect(sample(text, #"pmfs_fuse_request_duration_seconds_count{\#(s),class="read"}"#) == 0)
        #expect(text.contains("# TYPE pmfs_fuse_request_duration_seconds histogram\n"))
        #expect(text.contains("# HELP pmfs_fuse_requests_total "))
    }

    @Test func histogramBucketsAreCumulativeWithExactBounds() {
        let registry = MetricsRegistry()
        let timer = CoreMetrics.Timer(label: "pmfs_test_seconds", dimensions: [("k", "v")], factory: registry)
        timer.recordNanoseconds(5_000)         // ≤ 10 µs
        timer.recordNanoseconds(10_000)        // ≤ 10 µs (bounds are inclusive)
        timer.recordNanoseconds(3_000_000)     // ≤ 5 ms
        timer.recordNanoseconds(2_000_000_000) // +Inf
        let text = String(decoding: registry.render(), as: UTF8.self)
        #expect(sample(text, #"pmfs_test_seconds_bucket{k="v",le="0.00001"}"#) == 2)
        #expect(sample(text, #"pmfs_test_seconds_bucket{k="v",le="0.0025"}"#) == 2)
        #expect(sample(text, #"pmfs_test_seconds_bucket{k="v",le="0.005"}"#) == 3)
        #expect(sample(text, #"pmfs_test_seconds_bucket{k="v",le="1"}"#) == 3)
        #expect(sample(text, #"pmfs_test_seconds_bucket{k="v",le="+Inf"}"#) == 4)
        #expect(sample(text, #"pmfs_test_seconds_count{k="v"}"#) == 4)
        #expect(sample(text, #"pmfs_test_seconds_sum{k="v"}"#) == 2.003015)
    }

    @Test func gaugesAreComputedWhenScraped() {
        let registry = MetricsRegistry()
        let gauge = CoreMetrics.Gauge(label: "pmfs_open_handles", dimensions: [("session", "host")], factory: registry)
        let source = ReplyCount()
        registry.onScrape(key: "handles") { gauge.record(source.count) }
        source.add(); source.add()
        #expect(sample(String(decoding: registry.render(), as: UTF8.self), #"pmfs_open_handles{session="host"}"#) == 2)
        source.add()
        #expect(sample(String(decoding: registry.render(), as: UTF8.self), #"pmfs_open_handles{session="host"}"#) == 3)
        // A collector set again under its key replaces the old one: they never pile up.
        let other = ReplyCount()
        registry.onScrape(key: "handles") { gauge.record(other.count) }
        #expect(sample(String(decoding: registry.render(), as: UTF8.self), #"pmfs_open_handles{session="host"}"#) == 0)
    }
}

final class ReplyCount: Sendable {
    private let n = Mutex(0)
    func add() { n.withLock { $0 += 1 } }
    var count: Int { n.withLock { $0 } }
}

/// One HTTP exchange over a real TCP socket: sends `request`, returns all it got until the server closed.
func exchange(_ port: Int, _ request: [UInt8]) -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = in_port_t(UInt16(port).bigEndian)
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    let ok = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard ok == 0 else { return "connect failed" }
    _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    var got: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        // A signal to the test process (another suite's child exiting) is not the server closing.
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        got += buffer[0..<n]
    }
    return String(decoding: got, as: UTF8.self)
}

@Suite struct EndpointTests {
    @Test func servesMetricsAnd404AndBoundsRequests() throws {
        let registry = MetricsRegistry()
        let counter = CoreMetrics.Counter(label: "pmfs_fsyncs_total", factory: registry)
        counter.increment(by: 7)
        let endpoint = try MetricsEndpoint(at: try MetricsAddress.parse("127.0.0.1:0")) { registry.render() }
        defer { endpoint.stop() }
        let port = endpoint.address.port
        #expect(port > 0)
        let ok = exchange(port, Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(ok.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(ok.lowercased().contains("content-type: text/plain; version=0.0.4"))
        #expect(ok.contains("\npmfs_fsyncs_total 7\n"))
        #expect(exchange(port, Array("GET /other HTTP/1.1\r\nHost: x\r\n\r\n".utf8)).hasPrefix("HTTP/1.1 404 "))
        #expect(exchange(port, Array("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".utf8)).hasPrefix("HTTP/1.1 405 "))
        // A request larger than the limit is cut off unanswered.
        let huge = Array("GET /metrics HTTP/1.1\r\nX: ".utf8) + [UInt8](repeating: UInt8(ascii: "a"), count: 64 << 10)
        #expect(!exchange(port, huge).contains("200 OK"))
        // And the endpoint still serves.
        #expect(exchange(port, Array("GET /metrics HTTP/1.0\r\n\r\n".utf8)).contains("pmfs_fsyncs_total 7"))
    }

    @Test func refusesConnectionsPastTheLimit() throws {
        var limits = MetricsEndpoint.Limits()
        limits.connections = 2
        let endpoint = try MetricsEndpoint(at: try MetricsAddress.parse("127.0.0.1:0"), limits: limits) { Array("x\n".utf8) }
        defer { endpoint.stop() }
        let port = endpoint.address.port
        // Two idle connections hold both places; a third is closed without an answer.
        var idle: [Int32] = []
        for _ in 0..<2 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = in_port_t(UInt16(port).bigEndian)
            a.sin_addr.s_addr = inet_addr("127.0.0.1")
            _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            idle.append(fd)
        }
        usleep(200_000)   // let the event loop accept them
        #expect(exchange(port, Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8)) == "")
        idle.forEach { close($0) }
        usleep(200_000)
        #expect(exchange(port, Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8)).hasPrefix("HTTP/1.1 200 OK"))
    }

    @Test func closesAConnectionThatOutstaysItsLifetime() throws {
        var limits = MetricsEndpoint.Limits()
        limits.lifetimeSeconds = 1
        let endpoint = try MetricsEndpoint(at: try MetricsAddress.parse("127.0.0.1:0"), limits: limits) { Array("x\n".utf8) }
        defer { endpoint.stop() }
        // A request that never ends, trickled well inside the idle timeout: cut off after about a second.
        let started = monotonicNanoseconds()
        let got = exchange(endpoint.address.port, Array("GET /metrics HTTP/1.1\r\nX: a".utf8))
        let took = Double(nanosecondsSince(started)) / 1e9
        #expect(got == "")
        #expect(took >= 0.9 && took < 4.5, "closed after \(took) s")
    }
}

@Suite struct SampleTests {
    @Test func samplesLeaveOutCommentsAndBucketsAndKeepLabelsWithSpaces() {
        let text = """
            # HELP pmfs_x_total x
            # TYPE pmfs_x_total counter
            pmfs_x_total{session="vm 1"} 7
            pmfs_y_seconds_bucket{le="+Inf"} 3
            pmfs_y_seconds_sum 0.25
            pmfs_y_seconds_count 3
            pmfs_gauge 2

            """
        let got = MetricsRegistry.samples(inText: Array(text.utf8))
        #expect(got.map(\.series) == [#"pmfs_x_total{session="vm 1"}"#, "pmfs_y_seconds_sum", "pmfs_y_seconds_count", "pmfs_gauge"])
        #expect(got.map(\.value) == ["7", "0.25", "3", "2"])
    }

    @Test func aRegistrysCountersComeBackAsSamples() {
        let registry = MetricsRegistry()
        CoreMetrics.Counter(label: "pmfs_fsyncs_total", factory: registry).increment(by: 5)
        #expect(registry.samples().contains { $0.series == "pmfs_fsyncs_total" && $0.value == "5" })
    }
}
