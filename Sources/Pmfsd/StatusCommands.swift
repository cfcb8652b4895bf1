// The control socket's df, stat and stats: read-only looks at the served pool
// and the daemon's counters, answered from what is already kept (no request
// pays for them).
import PMFSControl
import PMFSCore
import PMFSMetadata

extension ControlCommands {
    /// df: the pool's space and inodes (`MetadataStore.statistics` takes the
    /// space-map and inode-table locks for its two reads), shared blocks, the cache.
    func spaceInfo() -> SpaceInfo {
        let s = guests.fs.metadata.statistics()
        let sharing: SharingInfo?, sharingError: String?
        do { (sharing, sharingError) = (try sharedBlocks(), nil) } catch { (sharing, sharingError) = (nil, "\(error)") }
        return SpaceInfo(blockSize: s.blockSize, totalBlocks: s.totalBlocks, freeBlocks: s.freeBlocks, totalInodes: s.totalInodes,
                         freeInodes: s.freeInodes, poolBytes: s.poolBytes, sharing: sharing, sharingError: sharingError, cache: cacheUsage())
    }

    /// The shared-block table, read under the space-map lock (`sharedBlockRecords`
    /// takes it; a transaction that changes counts holds it until it ends), so
    /// the walk sees no half-made change. Allocations wait for the walk, which
    /// reads one record per run of shared blocks (about one per extent cloned).
    private func sharedBlocks() throws -> SharingInfo {
        let records = try guests.fs.metadata.sharedBlockRecords()
        let blocks = records.reduce(UInt64(0)) { $0.addingClamped($1.length) }
        let references = records.reduce(UInt64(0)) { $0.addingClamped($1.length.multipliedClamped($1.owners)) }
        return SharingInfo(blocks: blocks, runs: records.count, references: references)
    }

    func cacheUsage() -> CacheUsage {
        let c = guests.fs.cacheUsage
        return CacheUsage(frames: c.frames, used: c.used, dirty: c.dirty, frameBytes: guests.fs.metadata.blockSize)
    }

    /// stat: the attributes of the inode a path names, as a FUSE GETATTR would
    /// answer them (the cache's size and times for a file it holds).
    func pathStatus(_ path: String?) throws -> PathStatus {
        guard let path else { throw ControlError("stat needs a path") }
        let paths = ServedPath(metadata: guests.fs.metadata, mount: mount)
        let found = try paths.attributes(at: try paths.components(path), path: path)
        do {
            return try status(of: try guests.fs.getattr(found.ino), path: path)
        } catch {
            throw ControlError("\(path): \(error)")   // removed since the lookup, or damaged
        }
    }

    private func status(of a: InodeAttributes, path: String) throws -> PathStatus {
        let metadata = guests.fs.metadata
        let target = a.type == .symbolicLink ? AttributeText.displayName(try metadata.readlink(a.ino)) : nil
        let xattrs = try metadata.listxattr(a.ino).map(AttributeText.displayName)
        return PathStatus(path: path, ino: a.ino, generation: a.generation, type: AttributeText.typeName(a.mode), mode: a.mode, links: a.nlink,
                          uid: a.uid, gid: a.gid, size: a.size, blocks: a.blocks, rdev: a.rdev, flags: a.flags, readOnly: a.readOnly,
                          times: (Self.time(a.atime), Self.time(a.mtime), Self.time(a.ctime), Self.time(a.btime)),
                          linkTarget: target, xattrs: xattrs, extents: try extents(a))
    }

    /// A regular file's mapped runs within its size (`mapBlocks` holds the
    /// inode's shared lock for the walk: its writers wait); nil for other types.
    private func extents(_ a: InodeAttributes) throws -> ExtentSummary? {
        guard a.type == .regular else { return nil }
        let blockSize = UInt64(guests.fs.metadata.blockSize)
        let blocks = a.size / blockSize + (a.size % blockSize == 0 ? 0 : 1)
        let segments = blocks == 0 ? [] : try guests.fs.metadata.mapBlocks(a.ino, start: 0, count: blocks)
        var summary = ExtentSummary(mappedRuns: 0, mappedBlocks: 0, sharedBlocks: 0)
        for s in segments where s.deviceBlock != nil {
            summary.mappedRuns += 1
            summary.mappedBlocks = summary.mappedBlocks.addingClamped(s.length)
            if s.shared { summary.sharedBlocks = summary.sharedBlocks.addingClamped(s.length) }
        }
        return summary
    }

    static func time(_ t: Timestamp) -> TimeValue { TimeValue(seconds: t.seconds, nanoseconds: t.nanoseconds) }

    /// stats: counters kept with the metrics registry on or off (relaxed
    /// atomics, read as they stand), and the registry's samples when it is on.
    func statistics() -> DaemonStatistics {
        let fs = guests.fs
        let transactions = fs.metadata.transactionCounts
        let metrics = registry?.samples().sorted { $0.series < $1.series }.map { MetricSample(series: $0.series, value: $0.value) }
        return DaemonStatistics(sessions: sessionCounts(), hostTransport: hostTransportCounts(),
                                transactionsCommitted: transactions.committed, transactionsAborted: transactions.aborted,
                                fsyncs: fs.fsyncsTaken, deviceFlushes: fs.device.flushesDone, cache: cacheUsage(), metrics: metrics)
    }

    private func sessionCounts() -> [SessionCounts] {
        var all: [SessionCounts] = []
        if let hostOperations, let hostServer, let mount {
            all.append(SessionCounts(session: hostOperations.session, name: "host mount \(mount)", requests: hostServer.requestsTaken,
                                     inFlight: hostServer.requestsInFlight))
        }
        return all + guests.sessionCounts()
    }

    private func hostTransportCounts() -> HostTransportCounts? {
        hostTransport.map {
            HostTransportCounts(viaRing: $0.viaRing, viaDevice: $0.viaDevice, fsyncGroups: $0.fsyncGroups, groupedFsyncs: $0.groupedFsyncs)
        }
    }
}
