"""Checks a point of tools/guest/crash.sh: reads the guest's console markers on stdin and the point's
directory (argv[1]) on the restarted pmfsd's host mount. Every journal record the guest saw fsynced must be
there byte for byte, every file it saw fdatasynced must have its sum, every unlink it saw return must be
gone. Prints a one-line summary; problems go to stderr, exit status 1."""
import hashlib, os, sys
d = sys.argv[1]
journal, files = [], {}
for line in sys.stdin:
    w = line.split()
    if w[:2] == ["PMFS-GUEST:", "ACK"]:
        journal.append((int(w[2]), int(w[3]), w[4]))
    elif w[:2] == ["PMFS-GUEST:", "SUM"]:
        files[w[3]] = w[2]
    elif w[:2] == ["PMFS-GUEST:", "GONE"]:
        files[w[2]] = None
problems = []
data = open(os.path.join(d, "journal"), "rb").read()
for off, n, want in journal:
    if hashlib.sha256(data[off:off + n]).hexdigest() != want:
        problems.append(f"journal record at {off} ({n} bytes, fsynced) differs (journal is {len(data)} bytes)")
for name, want in files.items():
    p = os.path.join(d, name)
    if want is None:
        if os.path.exists(p):
            problems.append(f"{name}: its unlink returned, but it is there")
    elif not os.path.exists(p):
        problems.append(f"{name}: fdatasynced, but missing")
    elif hashlib.sha256(open(p, "rb").read()).hexdigest() != want:
        problems.append(f"{name}: fdatasynced, but its contents differ")
for p in problems[:10]:
    print(p, file=sys.stderr)
print(f"{len(journal)} records, {sum(1 for v in files.values() if v)} files, {sum(1 for v in files.values() if v is None)} unlinks")
sys.exit(1 if problems else 0)
