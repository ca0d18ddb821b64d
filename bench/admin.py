"""An operator's commands on a deep stream: `stats`, `check` and `purge`, as whole `ephq`
processes, each against what it cannot do without.

    python bench/admin.py [--workdir DIR] [-n 1000000] [--purge-n 100000] [--reps 3]

Fills stream `s` with N messages (without fsync: the filling is not what is measured), then
takes turns, REPS times:
- `ephq stats s --json` in a fresh process (the first one after the filling is given apart:
  it counts the leaves; later ones read the census);
- `ephq check`, and its floor: one process walking the same tree and reading every file (open
  relative to its directory, read, close and a parse by json's C scanner), what a check that
  reads every message does in one process without doing anything else.
With `--baseline REV`, each rep also runs `check` of REV (checked out into a temporary git
worktree) and of this tree through the Python API, in turn, on the same stream.
Then fills stream `p` with PURGE_N messages and times `ephq purge p --yes`, and right after it
an `ephq enqueue p` and an `ephq dequeue p` (the stream is usable at once; the files go in the
background).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline import ROOT, checked_out

BIN = Path(sys.executable).parent

FILL = r"""
import sys
from ephq import Queue
home, stream, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = Queue(home, fsync=False)
for start in range(0, n, 10_000):
    batch = range(start, min(n, start + 10_000))
    q.enqueue_many(stream, [{"n": i, "pad": "x" * 100} for i in batch])
"""

# Reads every message file as a check must, and nothing else: each file opened relative to its
# directory's fd, read in one read (the listing's d_type says it is a regular file; the open
# follows no link and does not block) and parsed by json's C scanner alone, as ephq parses
# records.
FLOOR = r"""
import json, os, sys
scan = json.JSONDecoder().scan_once
flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
n = 0
for state in ("ready", "delayed", "inflight"):
    for path, _, names in os.walk(os.path.join(sys.argv[1], "s", state)):
        directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for name in names:
            fd = os.open(name, flags, dir_fd=directory)
            try:
                scan(os.read(fd, 65536).decode(), 0)
            finally:
                os.close(fd)
            n += 1
        os.close(directory)
print(n)
"""


# check() through the API of the ephq at sys.argv[1], on the home at sys.argv[2].
CHECK = r"""
import sys
sys.path.insert(0, sys.argv[1])
from ephq import Queue
problems = Queue(sys.argv[2]).check()
assert problems == [], problems
"""


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Seconds the process took; it must succeed."""
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("-n", type=int, default=1_000_000)
    parser.add_argument("--purge-n", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="also time check() of REV, in turn")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        baseline = None
        if args.baseline:
            scratch = stack.enter_context(tempfile.TemporaryDirectory())
            baseline = str(stack.enter_context(checked_out(args.baseline, scratch)))
        run(args, baseline)


def run(args: argparse.Namespace, baseline: str | None) -> None:
    root = tempfile.mkdtemp(prefix="ephq-bench-admin-", dir=args.workdir)
    home = os.path.join(root, "home")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["EPHQ_HOME"] = home
    ephq = str(BIN / "ephq")
    try:
        filled = timed([sys.executable, "-c", FILL, home, "s", str(args.n)], env)
        print(f"filled {args.n:,} messages in {filled:.0f} s", file=sys.stderr)
        first_stats = timed([ephq, "stats", "s", "--json"], env)
        times: dict[str, list[float]] = {"stats": [], "check": [], "floor": []}
        versions = {} if baseline is None else {args.baseline: baseline, "this tree": str(ROOT)}
        api: dict[str, list[float]] = {name: [] for name in versions}
        for rep in range(args.reps):
            times["stats"].append(timed([ephq, "stats", "s", "--json"], env))
            times["check"].append(timed([ephq, "check"], env))
            times["floor"].append(timed([sys.executable, "-c", FLOOR, home], env))
            for name in sorted(versions, reverse=rep % 2 == 1):
                api[name].append(timed([sys.executable, "-c", CHECK, versions[name], home], env))
        timed([sys.executable, "-c", FILL, home, "p", str(args.purge_n)], env)
        purge = timed([ephq, "purge", "p", "--yes"], env)
        subprocess.run(
            [ephq, "enqueue", "p"], input=b"{}", env=env, check=True, stdout=subprocess.DEVNULL
        )
        after = subprocess.run([ephq, "dequeue", "p"], env=env, capture_output=True, check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    fs = subprocess.run(["df", "-T", os.path.dirname(root)], capture_output=True, check=False)
    kind = fs.stdout.decode().splitlines()[-1].split()[1] if fs.returncode == 0 else "?"
    print(
        f"ephq's commands on {args.n:,} messages, {time.strftime('%Y-%m-%d')}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, {args.reps} reps, file system "
        f"{kind}\n"
    )
    floor = statistics.median(times["floor"])
    print("| command | median s | min-max s | / the floor |")
    print("|---|---|---|---|")
    print(f"| `ephq stats s --json`, the first | {first_stats:.2f} | | |")
    for name, label in (
        ("stats", "`ephq stats s --json`, later"),
        ("check", "`ephq check`"),
        ("floor", "read every file, one process"),
    ):
        values = times[name]
        median = statistics.median(values)
        ratio = f"{median / floor:.2f}x" if name != "stats" else ""
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(f"| {label} | {median:.2f} | {spread} | {ratio} |")
    print(f"| `ephq purge p --yes` of {args.purge_n:,} | {purge:.2f} | | |")
    if api:
        old, new = (statistics.median(api[name]) for name in versions)
        print(
            f"\ncheck() through the API, in turn: {args.baseline} {old:.2f} s, this tree "
            f"{new:.2f} s ({new / old:.2f}x)"
        )
    usable = "delivered" if after.returncode == 0 and b'"data":{}' in after.stdout else "NOT"
    print(f"\nright after the purge, a message enqueued to p and dequeued: {usable}")


if __name__ == "__main__":
    main()
