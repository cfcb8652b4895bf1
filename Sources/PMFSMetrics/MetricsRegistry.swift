import CoreMetrics
import Prometheus
import Synchronization

/// The swift-metrics backend of pmfsd: counters and gauges go to a
/// swift-prometheus `PrometheusCollectorRegistry` (with the help text from
/// `PMFSMetricHelp`), timers to `LatencyHistogram`s of our own, because
/// swift-prometheus's histograms take a lock for each recorded value and a
/// timer here is recorded once per FUSE request. `render()` runs the
/// scrape-time collectors (gauges computed only when asked), then writes all
/// of it in the Prometheus text format.
public final class MetricsRegistry: MetricsFactory, Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let histograms = Mutex<[LatencyHistogram]>([])
    /// Scrape-time collectors by key: one set again under its key replaces the
    /// old (a guest socket served anew), so they are as many as the sessions.
    private let collectors = Mutex<[String: @Sendable () -> Void]>([:])

    public init() {}

    /// Runs `update` before each scrape (gauges read from the pool, the cache, the sessions).
    public func onScrape(key: String, _ update: @escaping @Sendable () -> Void) { collectors.withLock { $0[key] = update } }

    /// The text exposition of every metric, gauges brought up to date first.
    public func render() -> [UInt8] {
        for update in collectors.withLock({ $0.values }) { update() }
        var out: [UInt8] = []
        out.reserveCapacity(64 << 10)
        registry.emit(into: &out)
        let all = histograms.withLock { $0 }
        var named: Set<String> = []
        for h in all where named.insert(h.name).inserted {
            appendHeader(&out, name: h.name, type: "histogram")
            for same in all where same.name == h.name { same.emit(into: &out) }
        }
        return out
    }

    /// Every sample of `render()` but the histogram buckets, as (series, value)
    /// (pmfsctl stats: the sums and counts say enough in a table).
    public func samples() -> [(series: String, value: String)] { Self.samples(inText: render()) }

    /// The sample lines of a text exposition: "series value", the value after
    /// the last space (a label value may hold spaces; we write no timestamps).
    static func samples(inText text: [UInt8]) -> [(series: String, value: String)] {
        var result: [(series: String, value: String)] = []
        for line in text.split(separator: UInt8(ascii: "\n")) where line.first != UInt8(ascii: "#") {
            guard let space = line.lastIndex(of: UInt8(ascii: " ")) else { continue }
            let series = String(decoding: line[..<space], as: UTF8.self)
            let name = series.prefix { $0 != "{" }
            guard !name.isEmpty, !name.hasSuffix("_bucket") else { continue }
            result.append((series, String(decoding: line[line.index(after: space)...], as: UTF8.self)))
        }
        return result
    }

    private func appendHeader(_ out: inout [UInt8], name: String, type: String) {
        if let help = PMFSMetricHelp.text[name] { out.append(contentsOf: "# HELP \(name) \(help)\n".utf8) }
        out.append(contentsOf: "# TYPE \(name) \(type)\n".utf8)
    }

    /// The whole name as the metric name (the layers name metrics in full, units included).
    private static func descriptor(_ name: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: PMFSMetricHelp.text[name] ?? "")
    }

    // MARK: MetricsFactory

    public func makeCounter(label: String, dimensions: [(String, String)]) -> CounterHandler {
        registry.makeCounter(descriptor: Self.descriptor(label), labels: dimensions)
    }

    public func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> FloatingPointCounterHandler {
        registry.makeCounter(descriptor: Self.descriptor(label), labels: dimensions)
    }

    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> RecorderHandler {
        // Gauges only: pmfs records distributions with timers.
        registry.makeGauge(descriptor: Self.descriptor(label), labels: dimensions)
    }

    public func makeMeter(label: String, dimensions: [(String, String)]) -> MeterHandler {
        registry.makeGauge(descriptor: Self.descriptor(label), labels: dimensions)
    }

    public func makeTimer(label: String, dimensions: [(String, String)]) -> TimerHandler {
        histograms.withLock { all in
            if let same = all.first(where: { $0.name == label && $0.labels.elementsEqual(dimensions, by: ==) }) { return same }
            let h = LatencyHistogram(name: label, labels: dimensions)
            all.append(h)
            return h
        }
    }

    public func destroyCounter(_ handler: CounterHandler) {
        if let c = handler as? Prometheus.Counter { registry.unregisterCounter(c) }
    }

    public func destroyFloatingPointCounter(_ handler: FloatingPointCounterHandler) {
        if let c = handler as? Prometheus.Counter { registry.unregisterCounter(c) }
    }

    public func destroyRecorder(_ handler: RecorderHandler) {
        if let g = handler as? Prometheus.Gauge { registry.unregisterGauge(g) }
    }

    public func destroyMeter(_ handler: MeterHandler) {
        if let g = handler as? Prometheus.Gauge { registry.unregisterGauge(g) }
    }

    public func destroyTimer(_ handler: TimerHandler) {
        histograms.withLock { $0.removeAll { $0 === handler } }
    }
}

/// A request-latency histogram that records without a lock: one relaxed
/// atomic add to the bucket, one to the sum. Buckets are kept apart and made
/// cumulative when written out, so a scrape racing a record may show a count
/// one off from the buckets' total, never a torn value.
public final class LatencyHistogram: TimerHandler, Sendable {
    /// Upper bounds in nanoseconds, 10 µs to 1 s: FUSE requests here take
    /// from about a microsecond (cached GETATTR) to milliseconds (fsync).
    public static let bounds: [Int64] = [
        10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
        5_000_000, 10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000, 1_000_000_000,
    ]
    let name: String
    let labels: [(String, String)]
    private let renderedLabels: String
    /// One more than `bounds`: the last counts what is above every bound (+Inf).
    private let buckets: [AtomicCount]
    private let sumNanoseconds = AtomicCount()

    init(name: String, labels: [(String, String)]) {
        self.name = name
        self.labels = labels
        renderedLabels = labels.map { "\($0.0)=\"\(PrometheusText.escape($0.1))\"" }.joined(separator: ",")
        buckets = (0...Self.bounds.count).map { _ in AtomicCount() }
    }

    public func recordNanoseconds(_ duration: Int64) {
        let d = max(0, duration)
        var i = 0
        while i < Self.bounds.count && d > Self.bounds[i] { i += 1 }
        buckets[i].value.add(1, ordering: .relaxed)
        sumNanoseconds.value.add(d, ordering: .relaxed)
    }

    func emit(into out: inout [UInt8]) {
        let sep = renderedLabels.isEmpty ? "" : ","
        var total: Int64 = 0
        for (i, bucket) in buckets.enumerated() {
            total &+= bucket.value.load(ordering: .relaxed)
            let le = i < Self.bounds.count ? PrometheusText.seconds(Self.bounds[i]) : "+Inf"
            out.append(contentsOf: "\(name)_bucket{\(renderedLabels)\(sep)le=\"\(le)\"} \(total)\n".utf8)
        }
        let braces = renderedLabels.isEmpty ? "" : "{\(renderedLabels)}"
        out.append(contentsOf: "\(name)_sum\(braces) \(PrometheusText.seconds(sumNanoseconds.value.load(ordering: .relaxed)))\n".utf8)
        out.append(contentsOf: "\(name)_count\(braces) \(total)\n".utf8)
    }
}

final class AtomicCount: Sendable {
    let value = Atomic<Int64>(0)
}

enum PrometheusText {
    /// A label value in the text format: backslash, quote and newline escaped.
    static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }

    /// Nanoseconds as seconds, exactly for the bucket bounds (0.00001, 0.0025, 1).
    static func seconds(_ nanoseconds: Int64) -> String {
        let whole = nanoseconds / 1_000_000_000, fraction = nanoseconds % 1_000_000_000
        guard fraction != 0 else { return "\(whole)" }
        var digits = String(fraction)
        digits = String(repeating: "0", count: 9 - digits.count) + digits
        while digits.hasSuffix("0") { digits.removeLast() }
        return "\(whole).\(digits)"
    }
}
