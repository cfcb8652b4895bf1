"""What a kill -9 of pmfsd may leave, shared by Tests/mount/test_crash.py and tools/crash/campaign.py:
the fsck codes an unclean stop may report, and the self-checking records the fsync workloads append."""
import hashlib
import re
import struct

# Problem codes an unclean stop may leave without anything being damaged.
UNCLEAN_ONLY = {"SB_STATE", "ORPHAN_LIST", "ORPHAN_FLAG", "ORPHAN_LINKED"}

RECORD_HEADER = 48  # seq (8), body length (8), sha256 of the body (32)


def make_record(seq, body):
    return struct.pack("<QQ", seq, len(body)) + hashlib.sha256(body).digest() + body


def parse_records(data):
    """Records from the start of a journal: (seq, offset, length) while they check out, and where they stop."""
    out, off = [], 0
    while off + RECORD_HEADER <= len(data):
        seq, n = struct.unpack("<QQ", data[off:off + 16])
        end = off + RECORD_HEADER + n
        if end > len(data) or hashlib.sha256(data[off + RECORD_HEADER:end]).digest() != data[off + 16:off + RECORD_HEADER]:
            break
        out.append((seq, off, end - off))
        off = end
    return out, off


def journal_problem(name, data, acknowledged):
    """None if every acknowledged (seq, offset, length) record of the journal `data` is intact and nothing but
    whole records follows them, else what is wrong."""
    found, good_end = parse_records(data)
    by_seq = {seq: (off, n) for seq, off, n in found}
    for seq, off, n in acknowledged:
        if by_seq.get(seq) != (off, n):
            return f"{name}: fsynced record {seq} at {off} (+{n}) is not intact (size {len(data)})"
    if good_end != len(data):
        last = max((off + n for _, off, n in acknowledged), default=0)
        return (f"{name}: {len(data) - good_end} bytes after the last whole record at {good_end} "
                f"(size {len(data)}, last fsynced end {last})")
    return None


def fsck_codes(output):
    return set(re.findall(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)\b", output))


def fsck_problem(rc, output):
    """None if `fsck.pmfs -f -n` after an unclean stop found nothing but what such a stop leaves."""
    if rc == 0:
        return None
    codes = fsck_codes(output)
    if rc == 4 and codes and codes <= UNCLEAN_ONLY:
        return None
    return f"fsck exit {rc}, codes {sorted(codes)}:\n{output}"
