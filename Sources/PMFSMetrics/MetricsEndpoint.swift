import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// `GET /metrics` over HTTP/1.1 (swift-nio), one event-loop thread. Local
/// clients may be hostile, so everything is bounded: at most
/// `Limits.connections` connections at once (more are closed on accept), at
/// most `Limits.requestBytes` read from one connection, one request per
/// connection (answered with `Connection: close`), and a connection idle for
/// `Limits.idleSeconds`, or open for `Limits.lifetimeSeconds`, is closed (a
/// client trickling bytes cannot keep a place for long).
public final class MetricsEndpoint: Sendable {
    public struct Limits: Sendable {
        public var connections = 16
        public var requestBytes = 8192
        public var idleSeconds: Int64 = 10
        public var lifetimeSeconds: Int64 = 30
        public init() {}
    }

    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel
    /// Where it listens, with the port the kernel chose when asked for port 0.
    public let address: MetricsAddress

    public init(at address: MetricsAddress, limits: Limits = Limits(), render: @escaping @Sendable () -> [UInt8]) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let gate = ConnectionGate(limit: limits.connections)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 32)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.maxMessagesPerRead, value: 1)
            .childChannelInitializer { channel in
                guard gate.enter() else { return channel.eventLoop.makeFailedFuture(MetricsEndpointError.tooManyConnections) }
                channel.closeFuture.whenComplete { _ in gate.leave() }
                channel.eventLoop.scheduleTask(in: .seconds(limits.lifetimeSeconds)) { channel.close(promise: nil) }
                return channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    try pipeline.addHandler(RequestSizeLimit(bytes: limits.requestBytes))
                    try pipeline.addHandler(IdleStateHandler(readTimeout: .seconds(limits.idleSeconds)))
                    try pipeline.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: true)
                    try pipeline.addHandler(MetricsHTTPHandler(render: render))
                }
            }
        do {
            channel = try bootstrap.bind(host: address.host, port: address.port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw MetricsEndpointError.bind(address, "\(error)")
        }
        self.group = group
        let port = channel.localAddress?.port ?? address.port
        self.address = MetricsAddress(host: address.host, port: port, family: address.family)
    }

    public func stop() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

public enum MetricsEndpointError: Error, CustomStringConvertible {
    case bind(MetricsAddress, String)
    case tooManyConnections

    public var description: String {
        switch self {
        case .bind(let a, let why): "--metrics \(a): cannot listen: \(why)"
        case .tooManyConnections: "too many metrics connections"
        }
    }
}

/// Counts open connections against a limit, from the event loop and from
/// close callbacks.
final class ConnectionGate: Sendable {
    private let open = Atomic<Int>(0)
    let limit: Int
    init(limit: Int) { self.limit = limit }

    func enter() -> Bool {
        if open.add(1, ordering: .relaxed).newValue <= limit { return true }
        open.subtract(1, ordering: .relaxed)
        return false
    }

    func leave() { open.subtract(1, ordering: .relaxed) }
}

/// Closes a connection that sends more than `bytes` in all: a request is a
/// line and a few headers, and nothing a client sends is kept beyond that.
final class RequestSizeLimit: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    private var left: Int
    init(bytes: Int) { left = bytes }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let n = unwrapInboundIn(data).readableBytes
        guard n <= left else {
            left = 0
            context.close(promise: nil)
            return
        }
        left -= n
        context.fireChannelRead(data)
    }
}

/// Answers the first request of a connection and closes it: 200 with the
/// metrics for GET or HEAD /metrics, 404 for any other path, 405 for other
/// methods.
final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let render: @Sendable () -> [UInt8]
    private var answered = false

    init(render: @escaping @Sendable () -> [UInt8]) { self.render = render }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data), !answered else { return }   // bodies are never read
        answered = true
        let path = head.uri.prefix { $0 != "?" }
        let status: HTTPResponseStatus
        var body: [UInt8]
        var type = "text/plain; charset=utf-8"
        if head.method != .GET && head.method != .HEAD {
            (status, body) = (.methodNotAllowed, Array("only GET\n".utf8))
        } else if path != "/metrics" {
            (status, body) = (.notFound, Array("not found; the metrics are at /metrics\n".utf8))
        } else {
            (status, body) = (.ok, render())
            type = "text/plain; version=0.0.4; charset=utf-8"
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Length", value: String(body.count))
        headers.add(name: "Connection", value: "close")
        if status == .methodNotAllowed { headers.add(name: "Allow", value: "GET, HEAD") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            body.withUnsafeBytes { bytes in
                var buffer = context.channel.allocator.buffer(capacity: bytes.count)
                buffer.writeBytes(bytes)
                context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            }
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent { context.close(promise: nil) } else { context.fireUserInboundEventTriggered(event) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
