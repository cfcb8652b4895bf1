// What the control socket's commands do: info, sessions, serve-fd, snapshot, flush, reload, end-session
// (df, stat and stats in StatusCommands.swift).
import FUSEDevice
import FUSEProtocol
import Glibc
import PMFSConcurrency
import PMFSControl
import PMFSMetrics
import PMFSServer
import Synchronization
import VhostUser

final class ControlCommands: ControlHandler, @unchecked Sendable {
    let guests: Guests
    let pool: String
    let data: String
    let mount: String?
    let hostOperations: PMFSOperations?
    /// The host mount's FUSE engine (its request count).
    let hostServer: FUSEServer?
    /// The host mount's requests by transport.
    let hostTransport: FUSETransportCounters?
    /// nil without --config.
    let reloader: ConfigReloader?
    /// nil without --metrics.
    let registry: MetricsRegistry?

    init(guests: Guests, pool: String, data: String, mount: String?, hostOperations: PMFSOperations?, hostServer: FUSEServer?,
         hostTransport: FUSETransportCounters?, reloader: ConfigReloader?, registry: MetricsRegistry?) {
        self.guests = guests; self.pool = pool; self.data = data; self.mount = mount; self.hostOperations = hostOperations
        self.hostServer = hostServer; self.hostTransport = hostTransport; self.reloader = reloader; self.registry = registry
    }

    func handle(_ request: ControlRequest, fd: Int32?, peer: PeerCredentials) -> (response: ControlResponse, held: Int?) {
        if request.command != "serve-fd", let fd { close(fd) }
        switch request.command {
        case "info":
            return (ControlResponse(ok: true, info: info()), nil)
        case "sessions":
            return (ControlResponse(ok: true, sessions: sessions()), nil)
        case "serve-fd":
            do {
                let id = try serve(fd, options: request.options ?? "", peer: peer)
                return (ControlResponse(ok: true, listener: id), id)
            } catch {
                return (.failure("serve-fd: \(error)"), nil)
            }
        case "snapshot":
            do {
                let made = try SnapshotCommand(fs: guests.fs, sessions: guests.sessions, mount: mount).run(request)
                return (ControlResponse(ok: true, snapshot: made), nil)
            } catch {
                return (.failure("\(error)"), nil)
            }
        case "flush":
            return (flush(), nil)
        case "reload":
            return (reload(), nil)
        case "end-session":
            return (endSession(request.listener, peer: peer), nil)
        case "df":
            return (ControlResponse(ok: true, df: spaceInfo()), nil)
        case "stat":
            do { return (ControlResponse(ok: true, stat: try pathStatus(request.path)), nil) } catch { return (.failure("stat: \(error)"), nil) }
        case "stats":
            return (ControlResponse(ok: true, stats: statistics()), nil)
        case "sandbox-test-forbidden-call" where Sandbox.testHookEnabled:
            // Under --seccomp kill the process dies here; under log, the kernel logs it.
            return (ControlResponse(ok: Sandbox.makeForbiddenCall() != -2), nil)
        default:
            return (.failure("unknown command '\(request.command.prefix(64))' (info, sessions, serve-fd, snapshot, flush, reload, end-session, df, stat, stats)"), nil)
        }
    }

    func release(_ listener: Int) { guests.stop(listener) }

    /// Writes back every cached change and flushes the device, as syncfs would.
    private func flush() -> ControlResponse {
        let dirty = UInt64(guests.fs.cacheUsage.dirty) * UInt64(guests.fs.metadata.blockSize)
        let started = monotonicNanoseconds()
        do {
            try guests.fs.syncAll()
        } catch {
            return .failure("flush: \(error)")
        }
        return ControlResponse(ok: true, flush: FlushInfo(dirtyBytes: dirty, milliseconds: milliseconds(since: started)))
    }

    /// Ends a guest's session; its listener stays.
    private func endSession(_ listener: Int?, peer: PeerCredentials) -> ControlResponse {
        guard let listener else { return .failure("end-session: which listener? (pmfsctl info lists them)") }
        switch guests.endSession(listener, asker: "pmfsctl, pid \(peer.pid)") {
        case nil: return .failure("end-session: no listener \(listener) (pmfsctl info lists them)")
        case .notConnected?: return .failure("end-session: no guest is connected on listener \(listener)")
        case .stillEnding?: return ControlResponse(ok: true, message: "listener \(listener): disconnected; the session is still ending")
        case .ended?: return ControlResponse(ok: true, message: "listener \(listener): session ended; the socket listens for the next front end")
        }
    }

    /// Reads the --config file again, as SIGHUP does, and answers with the outcome.
    private func reload() -> ControlResponse {
        guard let reloader else { return .failure("reload: pmfsd was started without --config: there is no file to read again") }
        do {
            return ControlResponse(ok: true, message: try reloader.reload(cause: "pmfsctl reload"))
        } catch {
            return .failure(error.description)
        }
    }

    private func info() -> DaemonInfo {
        DaemonInfo(version: ControlProtocol.version, pid: getpid(), pool: pool, data: data, mount: mount, exports: guests.listenerInfo())
    }

    private func sessions() -> [SessionInfo] {
        var all: [SessionInfo] = []
        if let hostOperations, let mount {
            let s = hostOperations.status
            all.append(SessionInfo(session: s.session, listener: nil, socket: "host mount \(mount)", export: "/",
                                   connected: s.since != nil, since: s.since, openHandles: s.openHandles, heldInodes: s.heldInodes,
                                   lockRecords: s.lockRecords, requests: hostServer?.requestsTaken))
        }
        return all + guests.sessionInfo()
    }

    /// Serves guests on a listening socket the client passed, as `--fd N,options` would.
    private func serve(_ fd: Int32?, options: String, peer: PeerCredentials) throws -> Int {
        guard let fd else { throw ControlError("pass a listening socket with the request (SCM_RIGHTS)") }
        var started = false
        defer { if !started { close(fd) } }
        guard Self.isListeningStream(fd) else { throw ControlError("the descriptor passed is not a listening stream socket") }
        var spec = try GuestListenerSpec.parse(options.isEmpty ? "\(fd)" : "\(fd),\(options)")
        // Devices and set-id bits as for the command line's listeners, judged
        // against those serving now (a running listener keeps what it was given).
        var specs = guests.runningSpecs + [spec]
        GuestListenerSpec.settleSharing(&specs)
        spec = specs[specs.count - 1]
        let export = try Export.open(spec.policy, in: guests.metadata)
        do {
            let guest = try guests.start(.descriptor(fd), spec: spec, export: export, origin: "control (pid \(peer.pid))")
            started = true
            return guest.id
        } catch {
            if export.confined { try? guests.metadata.unpin(export.root, count: 1) }
            throw error
        }
    }

    static func isListeningStream(_ fd: Int32) -> Bool {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &length) == 0, value == Int32(SOCK_STREAM.rawValue) else { return false }
        length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &value, &length) == 0 && value == 1
    }
}
