"""The crash campaign's workloads and their checkers.

Run as `workload.py KIND DIR LOG SEED`: a worker of one kind (fsync, metadata, data) works in its own
directory DIR on the mount until pmfsd dies under it, and logs to LOG (outside the mount) one JSON line
before each operation ({"i": n, "op": ...}) and one after it returned ({"i": n, "done": 1}); fsync records
are logged once their fsync returned. `check(kind, dir, log)` replays that log and compares it with what
the restarted pmfsd serves: an operation logged done must be there, the one in flight may or may not be.
"""
import ctypes
import errno
import hashlib
import json
import mmap
import os
import random
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from crashcheck import journal_problem, make_record  # noqa: E402

BLOCK = 4096
DATA_MAX = 4 << 20          # largest data-mix file
# What I/O on the dead mount answers (over io_uring: ECONNABORTED, and
# ECANCELED for requests in flight when the rings were torn down).
GONE = (errno.ENOTCONN, errno.EIO, errno.ECONNABORTED, errno.ECANCELED)
FALLOC_PUNCH = 0x01 | 0x02   # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def write_all(fd, data, offset=None):
    """A write pmfsd's death cuts short returns a short count: the rest then fails with ENOTCONN."""
    view, done = memoryview(data), 0
    while done < len(view):
        n = os.write(fd, view[done:]) if offset is None else os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "write returned 0")
        done += n


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.n = 0

    def begin(self, **op):
        self.n += 1
        self.f.write(json.dumps(dict(op, i=self.n)) + "\n")
        return self.n

    def done(self, i, **extra):
        self.f.write(json.dumps(dict(extra, i=i, done=1)) + "\n")


def read_log(path):
    """(operations in order, the set of done indices, extra fields of done lines)."""
    ops, done, extra = [], set(), {}
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            rec = json.loads(line)
            if "i" not in rec:
                continue
            if rec.get("done"):
                done.add(rec["i"])
                extra[rec["i"]] = rec
            else:
                ops.append(rec)
    return ops, done, extra


# ---------------------------------------------------------------- fsync: appends + fsync, several files

def run_fsync(d, log, rng):
    fds = [os.open(os.path.join(d, f"journal{k}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) for k in range(2)]
    offsets = [0, 0]
    seq = 0
    while True:
        k = rng.randrange(2)
        rec = make_record(seq, rng.randbytes(rng.choice([16, 100, 3000, 4096, 9000, 70000])))
        i = log.begin(op="rec", f=k, off=offsets[k], len=len(rec), seq=seq)
        write_all(fds[k], rec)
        (os.fsync if seq % 2 else os.fdatasync)(fds[k])
        log.done(i)
        offsets[k] += len(rec)
        seq += 1


def check_fsync(d, log_path):
    ops, done, _ = read_log(log_path)
    for k in range(2):
        acked = [(o["seq"], o["off"], o["len"]) for o in ops if o["f"] == k and o["i"] in done]
        path = os.path.join(d, f"journal{k}")
        if not os.path.exists(path):
            if acked:
                return f"{path} is missing"
            continue
        with open(path, "rb") as f:
            problem = journal_problem(path, f.read(), acked)
        if problem:
            return problem
    return None


# ---------------------------------------------------------------- metadata: namespace churn

class Tree:
    """The model of one metadata worker's directory: names -> ("f", ino) | ("d",) | ("l", target);
    inodes -> mode, content sha, whether that content was fsynced, user xattrs."""

    def __init__(self):
        self.names, self.inodes, self.next_ino = {}, {}, 0

    def copy(self):
        t = Tree()
        t.names = dict(self.names)
        t.inodes = {k: dict(v, xattr=dict(v["xattr"])) for k, v in self.inodes.items()}
        t.next_ino = self.next_ino
        return t

    def files(self):
        return [p for p, e in self.names.items() if e[0] == "f"]

    def dirs(self):
        return [""] + [p for p, e in self.names.items() if e[0] == "d"]

    def empty_dirs(self):
        return [p for p in self.dirs() if p and not any(q.startswith(p + "/") for q in self.names)]

    def apply(self, o):
        op = o["op"]
        if op == "create":
            self.names[o["p"]] = ("f", self.next_ino)
            self.inodes[self.next_ino] = {"mode": 0o644, "sha": o["sha"], "synced": o["fsync"], "xattr": {}}
            self.next_ino += 1
        elif op == "mkdir":
            self.names[o["p"]] = ("d",)
        elif op in ("rmdir", "unlink"):
            self.names.pop(o["p"])
        elif op == "rename":
            for p in [p for p in self.names if p == o["a"] or p.startswith(o["a"] + "/")]:
                self.names[o["b"] + p[len(o["a"]):]] = self.names.pop(p)
        elif op == "link":
            self.names[o["b"]] = self.names[o["a"]]
        elif op == "symlink":
            self.names[o["b"]] = ("l", o["t"])
        elif op == "chmod":
            self.inodes[self.names[o["p"]][1]]["mode"] = o["mode"]
        elif op == "setxattr":
            self.inodes[self.names[o["p"]][1]]["xattr"][o["k"]] = o["v"]
        elif op == "removexattr":
            self.inodes[self.names[o["p"]][1]]["xattr"].pop(o["k"])
        elif op == "fsync":
            self.inodes[self.names[o["p"]][1]]["synced"] = True

    def problem(self, actual):
        """None if `actual` (see scan_tree) is a state this model allows, else the first difference."""
        if set(actual) != set(self.names):
            return f"names differ: missing {sorted(set(self.names) - set(actual))[:5]}, extra {sorted(set(actual) - set(self.names))[:5]}"
        ino_of = {}
        for p, e in self.names.items():
            a = actual[p]
            if a[0] != e[0]:
                return f"{p}: a {a[0]}, expected a {e[0]}"
            if e[0] == "l" and a[1] != e[1]:
                return f"{p}: symlink to {a[1]!r}, expected {e[1]!r}"
            if e[0] != "f":
                continue
            node = self.inodes[e[1]]
            _, st_ino, mode, nlink, content, xattr = a
            if ino_of.setdefault(e[1], st_ino) != st_ino:
                return f"{p}: not the same inode as its other hard links"
            allowed = {node["sha"]} if node["synced"] else {node["sha"], sha(b"")}
            if content not in allowed:
                return f"{p}: contents {content[:12]} not among {sorted(s[:12] for s in allowed)}"
            if mode != node["mode"]:
                return f"{p}: mode {mode:o}, expected {node['mode']:o}"
            links = sum(1 for q in self.names.values() if q == e)
            if nlink != links:
                return f"{p}: {nlink} links, expected {links}"
            if xattr != node["xattr"]:
                return f"{p}: xattrs {xattr}, expected {node['xattr']}"
        return None


def scan_tree(d, content_limit=None):
    """What is in `d` now: relative path -> ("d",) | ("l", target) | ("f", st_ino, mode, nlink, sha, xattrs);
    a file larger than `content_limit` has its size and mtime for contents (not read: the reads cost most)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, d)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("d",)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p))
            else:
                if content_limit is not None and st.st_size > content_limit:
                    content = (st.st_size, st.st_mtime_ns)
                else:
                    with open(p, "rb") as f:
                        content = sha(f.read())
                xattr = {k: os.getxattr(p, k).decode() for k in os.listxattr(p) if k.startswith("user.")}
                out[rel] = ("f", st.st_ino, stat.S_IMODE(st.st_mode), st.st_nlink, content, xattr)
    return out


def next_metadata_op(tree, rng, n):
    """An operation that succeeds on the state `tree` describes."""
    files, dirs = tree.files(), tree.dirs()
    new = lambda: os.path.join(rng.choice(dirs), f"n{n}").lstrip("/")  # noqa: E731
    choice = rng.choices(["create", "mkdir", "rmdir", "unlink", "rename", "renamedir", "link", "symlink",
                          "chmod", "setxattr", "removexattr", "fsync"],
                         [30, 6, 4, 12, 12, 2, 5, 5, 6, 6, 3, 6])[0]
    if choice == "create" or not files and choice not in ("mkdir", "rmdir", "symlink"):
        return {"op": "create", "p": new(), "len": rng.choice([0, 10, 4000, 5000, 20000]), "fsync": rng.random() < 0.4}
    if choice == "mkdir" or choice == "rmdir" and not tree.empty_dirs():
        return {"op": "mkdir", "p": new()}
    if choice == "rmdir":
        return {"op": "rmdir", "p": rng.choice(tree.empty_dirs())}
    if choice == "unlink":
        links = [p for p, e in tree.names.items() if e[0] == "l"]
        return {"op": "unlink", "p": rng.choice(files + links)}
    if choice == "rename":
        a = rng.choice(files)
        others = [p for p in files if tree.names[p] != tree.names[a]]  # rename onto a link of itself does nothing
        return {"op": "rename", "a": a, "b": rng.choice(others) if others and rng.random() < 0.3 else new()}
    if choice == "renamedir" and len(dirs) > 1:
        a = rng.choice(dirs[1:])
        b = new()
        if b != a and not b.startswith(a + "/"):
            return {"op": "rename", "a": a, "b": b}
        return {"op": "mkdir", "p": b}
    if choice == "link" or choice == "renamedir":
        return {"op": "link", "a": rng.choice(files), "b": new()}
    if choice == "symlink":
        return {"op": "symlink", "t": rng.choice(files + ["nowhere"]), "b": new()}
    p = rng.choice(files)
    xattr = tree.inodes[tree.names[p][1]]["xattr"]
    if choice == "chmod":
        return {"op": "chmod", "p": p, "mode": rng.choice([0o600, 0o644, 0o755, 0o4755, 0o1777])}
    if choice == "removexattr" and xattr:
        return {"op": "removexattr", "p": p, "k": rng.choice(sorted(xattr))}
    if choice in ("setxattr", "removexattr"):
        return {"op": "setxattr", "p": p, "k": f"user.k{rng.randrange(4)}", "v": f"v{n}"}
    return {"op": "fsync", "p": p}


def do_metadata_op(d, o, rng):
    path = lambda k: os.path.join(d, o[k])  # noqa: E731
    op = o["op"]
    if op == "create":
        fd = os.open(path("p"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if o["data"]:
                write_all(fd, o["data"])
            if o["fsync"]:
                os.fsync(fd)
        finally:
            os.close(fd)
    elif op == "mkdir":
        os.mkdir(path("p"))
    elif op == "rmdir":
        os.rmdir(path("p"))
    elif op == "unlink":
        os.unlink(path("p"))
    elif op == "rename":
        os.rename(path("a"), path("b"))
    elif op == "link":
        os.link(path("a"), path("b"))
    elif op == "symlink":
        os.symlink(o["t"], path("b"))
    elif op == "chmod":
        os.chmod(path("p"), o["mode"])
    elif op == "setxattr":
        os.setxattr(path("p"), o["k"], o["v"].encode())
    elif op == "removexattr":
        os.removexattr(path("p"), o["k"])
    elif op == "fsync":
        fd = os.open(path("p"), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def run_metadata(d, log, rng):
    tree = Tree()
    n = 0
    while True:
        n += 1
        o = next_metadata_op(tree, rng, n)
        if o["op"] == "create":
            o["data"] = rng.randbytes(o["len"])
            o["sha"] = sha(o["data"])
        i = log.begin(**{k: v for k, v in o.items() if k != "data"})
        do_metadata_op(d, o, rng)
        log.done(i)
        tree.apply(o)


def check_metadata(d, log_path):
    ops, done, _ = read_log(log_path)
    tree = Tree()
    pending = None
    for o in ops:
        if o["i"] in done:
            tree.apply(o)
        else:
            pending = o
    actual = scan_tree(d)
    problem = tree.problem(actual)
    if problem and pending:
        with_pending = tree.copy()
        with_pending.apply(dict(pending, fsync=False))
        if with_pending.problem(actual) is None:
            return None
        problem += f" (nor with the operation in flight, {pending})"
    return problem


# ---------------------------------------------------------------- data: overwrites, truncates, fallocate, holes

class Image:
    """A data-mix file: its bytes (zero past the end) and size."""

    def __init__(self):
        self.data, self.size = bytearray(), 0

    def apply(self, o):
        op = o["op"]
        if op in ("pwrite", "direct"):
            data = random.Random(o["seed"]).randbytes(o["len"])
            end = o["off"] + o["len"]
            if len(self.data) < end:
                self.data.extend(bytes(end - len(self.data)))
            self.data[o["off"]:end] = data
            self.size = max(self.size, end)
        elif op == "truncate":
            if o["size"] < len(self.data):
                self.data[o["size"]:] = bytes(len(self.data) - o["size"])
            self.size = o["size"]
        elif op == "fallocate":
            self.size = max(self.size, o["off"] + o["len"])
        elif op == "punch":
            end = min(o["off"] + o["len"], len(self.data))
            if o["off"] < end:
                self.data[o["off"]:end] = bytes(end - o["off"])

    def clone_from(self, src, o):
        """copy_file_range of o["len"] bytes at o["soff"] of `src` to o["off"]: stops at the source's end."""
        n = max(0, min(o["len"], src.size - o["soff"]))
        if n == 0:
            return
        data = bytes(src.data[o["soff"]:o["soff"] + n]).ljust(n, b"\0")
        end = o["off"] + n
        if len(self.data) < end:
            self.data.extend(bytes(end - len(self.data)))
        self.data[o["off"]:end] = data
        self.size = max(self.size, end)

    def blocks(self, size):
        """sha of each 4 KiB block of the first `size` bytes, zero-padded."""
        out = []
        for b in range(0, size, BLOCK):
            chunk = bytes(self.data[b:b + BLOCK])
            out.append(sha(chunk + bytes(BLOCK - len(chunk))))
        return out


def next_data_op(sizes, rng):
    k = rng.randrange(len(sizes))
    size = sizes[k]
    off = lambda: rng.randrange(0, max(size, 1) + 65536)  # noqa: E731
    choice = rng.choices(["pwrite", "seq", "truncate", "fallocate", "punch", "direct", "clone", "sync"],
                         [30, 6, 8, 5, 6, 5, 10, 25])[0]
    if choice == "pwrite":
        return {"op": "pwrite", "f": k, "off": off(), "len": rng.choice([1, 100, 4096, 5000, 65536, 200000]), "seed": rng.getrandbits(32)}
    if choice == "seq":
        return {"op": "pwrite", "f": k, "off": size, "len": rng.choice([1 << 20, 2 << 20]), "seed": rng.getrandbits(32)}
    if choice == "truncate":
        return {"op": "truncate", "f": k, "size": rng.randrange(0, size + 100000)}
    if choice == "fallocate":
        return {"op": "fallocate", "f": k, "off": off(), "len": rng.choice([4096, 100000, 1 << 20])}
    if choice == "punch":
        return {"op": "punch", "f": k, "off": rng.randrange(0, max(size, 1)), "len": rng.choice([4096, 10000, 300000])}
    if choice == "direct":
        return {"op": "direct", "f": k, "off": rng.randrange(0, size // BLOCK + 16) * BLOCK, "len": rng.choice([1, 4, 32]) * BLOCK,
                "seed": rng.getrandbits(32)}
    if choice == "clone":
        # From the other file: mostly block-aligned (pmfs then shares the blocks, copy-on-write), sometimes
        # up to the source's end (its partial last block is shared too), sometimes unaligned (a copy).
        src = 1 - k
        aligned = rng.random() < 0.8
        soff = rng.randrange(0, max(sizes[src], 1) // BLOCK + 1) * BLOCK if aligned else rng.randrange(0, max(sizes[src], 1))
        dst = rng.randrange(0, size // BLOCK + 16) * BLOCK if aligned else rng.randrange(0, size + 65536)
        length = rng.choice([1, 16, 64, 256]) * BLOCK if aligned else rng.choice([100, 5000, 70000])
        if aligned and rng.random() < 0.3:
            length = max(sizes[src] - soff, BLOCK)
        return {"op": "clone", "f": k, "src": src, "soff": soff, "off": dst, "len": length}
    return {"op": "sync", "f": k, "how": rng.choice(["fsync", "fdatasync"])}


def do_data_op(fds, paths, o):
    """Performs `o`; returns extra fields for the done line (a kind the mount does not support is a no-op)."""
    fd, op = fds[o["f"]], o["op"]
    if op == "pwrite":
        data = random.Random(o["seed"]).randbytes(o["len"])
        write_all(fd, data, o["off"])
    elif op == "direct":
        try:
            dfd = os.open(paths[o["f"]], os.O_WRONLY | os.O_DIRECT)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            return {"noop": 1}
        try:
            buf = mmap.mmap(-1, o["len"])
            buf.write(random.Random(o["seed"]).randbytes(o["len"]))
            assert os.pwritev(dfd, [buf], o["off"]) == o["len"]
        finally:
            os.close(dfd)
    elif op == "truncate":
        os.ftruncate(fd, o["size"])
    elif op == "fallocate":
        os.posix_fallocate(fd, o["off"], o["len"])
    elif op == "punch":
        if libc.fallocate(fd, FALLOC_PUNCH, o["off"], o["len"]) != 0:
            e = ctypes.get_errno()
            if e == errno.EOPNOTSUPP:
                return {"noop": 1}
            raise OSError(e, os.strerror(e))
    elif op == "sync":
        (os.fsync if o["how"] == "fsync" else os.fdatasync)(fd)
    elif op == "clone":
        done = 0
        while done < o["len"]:
            n = os.copy_file_range(fds[o["src"]], fd, o["len"] - done, o["soff"] + done, o["off"] + done)
            if n == 0:
                break           # the source's end
            done += n
    return {}


def run_data(d, log, rng):
    paths = [os.path.join(d, f"data{k}") for k in range(2)]
    fds = []
    for p in paths:
        i = log.begin(op="create", p=os.path.basename(p))
        fds.append(os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644))
        log.done(i)
    sizes = [0, 0]
    while True:
        o = next_data_op(sizes, rng)
        if o["op"] in ("pwrite", "direct", "fallocate") and o["off"] + o["len"] > DATA_MAX:
            o = {"op": "truncate", "f": o["f"], "size": rng.randrange(0, DATA_MAX // 2)}
        i = log.begin(**o)
        log.done(i, **do_data_op(fds, paths, o))
        img_size = sizes[o["f"]]
        if o["op"] in ("pwrite", "direct", "fallocate"):
            sizes[o["f"]] = max(img_size, o["off"] + o["len"])
        elif o["op"] == "truncate":
            sizes[o["f"]] = o["size"]
        elif o["op"] == "clone":
            copied = max(0, min(o["len"], sizes[o["src"]] - o["soff"]))
            if copied:
                sizes[o["f"]] = max(img_size, o["off"] + copied)


def check_data(d, log_path):
    """Each file's size must be one it had at or after its last acknowledged fsync, and each 4 KiB block one of
    the images that block had since then (the design's rule for unsynced writes: old or new, never torn).
    Both files are replayed together, in log order: a clone takes the other file's bytes of that moment."""
    ops, done, extra = read_log(log_path)
    data_ops = [o for o in ops if "f" in o]
    imgs = [Image(), Image()]
    last_sync = {}
    for n, o in enumerate(data_ops):
        if o["op"] == "sync" and o["i"] in done:
            last_sync[o["f"]] = n
    states = [[(0, [], b"")], [(0, [], b"")]]    # per file: (size, block hashes, bytes) since its last sync
    sizes = [{0}, {0}]
    grow = [None, None]                         # a write in flight may be partly done: any size up to its end
    for n, o in enumerate(data_ops):
        k, acked = o["f"], o["i"] in done
        if acked and extra[o["i"]].get("noop"):
            continue
        if n < last_sync.get(k, -1):            # only the states since the last acknowledged sync matter
            apply_data_op(imgs, o)
            continue
        img = imgs[k]
        if o["op"] == "sync":
            if acked:
                states[k], sizes[k] = [(img.size, img.blocks(img.size), bytes(img.data))], {img.size}
            continue
        before = img.size
        apply_data_op(imgs, o)
        states[k].append((img.size, img.blocks(img.size), bytes(img.data)))
        sizes[k].add(img.size)
        if not acked and o["op"] in ("pwrite", "direct", "clone"):
            grow[k] = (before, img.size)
    for k in range(2):
        path = os.path.join(d, f"data{k}")
        created = any(o["op"] == "create" and o["p"] == f"data{k}" and o["i"] in done for o in ops)
        if not os.path.exists(path):
            if created:
                return f"{path} is missing"
            continue
        with open(path, "rb") as f:
            problem = image_problem(path, f.read(), states[k], sizes[k], grow[k])
        if problem:
            return problem
    return None


def apply_data_op(imgs, o):
    if o["op"] == "clone":
        imgs[o["f"]].clone_from(imgs[o["src"]], o)
    else:
        imgs[o["f"]].apply(o)


def image_problem(path, data, states, sizes, grow):
    if len(data) not in sizes and not (grow and grow[0] <= len(data) <= grow[1]):
        return f"{path}: size {len(data)} is none it had since its last fsync ({sorted(sizes)})"
    allowed = {}
    for _, blocks, _ in states:
        for b, h in enumerate(blocks):
            allowed.setdefault(b, set()).add(h)
    zero = sha(bytes(BLOCK))
    for b in range(0, len(data), BLOCK):
        chunk = data[b:b + BLOCK]
        if len(chunk) < BLOCK:
            # The block at the end: only the part below the size is seen (an in-place write of a block
            # whose size change was not committed shows its new bytes up to the old size).
            ok = any(bytes(image[b:b + len(chunk)]).ljust(len(chunk), b"\0") == chunk for _, _, image in states)
        else:
            h = sha(chunk)
            ok = h in allowed.get(b // BLOCK, set()) or h == zero and grow
        if not ok:
            return f"{path}: block {b // BLOCK} (offset {b}) holds none of the images it had since its last fsync"
    return None


RUN = {"fsync": run_fsync, "metadata": run_metadata, "data": run_data}
CHECK = {"fsync": check_fsync, "metadata": check_metadata, "data": check_data}


def main():
    kind, d, log_path, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    log = Log(log_path)
    try:
        RUN[kind](d, log, random.Random(seed))
    except OSError as e:
        # The dead mount ends every worker; anything else while pmfsd still served is a failure.
        # A path walked after the lazy unmount ends on the empty mount point
        # instead (ENOENT): then the worker's own directory is gone too.
        log.f.write(json.dumps({"stopped": e.errno, "error": str(e)}) + "\n")
        sys.exit(0 if e.errno in GONE or not os.path.isdir(d) else 3)


if __name__ == "__main__":
    main()
