"""Do the queue features cost streams that do not use them? And what do they cost when used?

    python bench/features.py --baseline REV [--workdir DIR] [--reps 5] [--n 2000]

Checks out REV (the code before the features) into a temporary git worktree and runs the same
workloads on it and on this tree, alternating A/B in one invocation, each rep in a fresh
process on a fresh home (file backend, durable), so the ratios are fair on a noisy machine:
- enqueue: one message at a time; and by four producer processes at once;
- dequeue+ack: one at a time from a backlog of N;
- enqueue with a dedup key, a new key each time (this tree only: the cost of the feature);
- enqueue on a stream that has a dead-letter stream configured (this tree only);
- enqueue with a group (50 groups), and dequeue+ack over 50 groups (this tree only).
Reports the median rate (messages/s) over the reps, min-max, and this tree's ratio to REV.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline import ROOT, checked_out

# Run in a child process with the code under test first on sys.path.
WORKLOAD = r"""
import json, sys, time
from ephq import Queue
home, phase, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = Queue(home)
payload = {"to": "someone@example.com", "subject": "hello", "body": "x" * 120}
if phase == "dequeue_ack":
    q.enqueue_many("s", [payload] * n)
if phase == "dequeue_ack_group":  # 50 groups: each dequeue finds some group's head out
    q.enqueue_many("s", [payload] * n, groups=[f"g{i % 50}" for i in range(n)])
if phase == "dead_letter_stream":
    q.configure("s", dead_letter_stream="dlq")
start = time.perf_counter()
if phase == "enqueue_4_procs":  # four producer processes at once, n in all
    import os
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            mine = Queue(home)
            for _ in range(n // 4):
                mine.enqueue("s", payload)
            os._exit(0)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
elif phase in ("enqueue", "dead_letter_stream"):
    for _ in range(n):
        q.enqueue("s", payload)
elif phase == "enqueue_dedup_key":
    for i in range(n):
        q.enqueue("s", payload, dedup_key=f"key-{i}")
elif phase == "enqueue_group":
    for i in range(n):
        q.enqueue("s", payload, group=f"g{i % 50}")
elif phase == "dequeue_ack_group":
    for _ in range(n):
        m = q.dequeue("s")
        q.ack("s", m.receipt)
elif phase == "dequeue_ack":
    for _ in range(n):
        m = q.dequeue("s")
        q.ack("s", m.receipt)
seconds = time.perf_counter() - start
print(json.dumps({"rate": n / seconds}))
"""

BOTH = ("enqueue", "enqueue_4_procs", "dequeue_ack")
THIS_ONLY = ("enqueue_dedup_key", "dead_letter_stream", "enqueue_group", "dequeue_ack_group")


def run_once(code_root: Path, workdir: str, phase: str, n: int) -> float:
    home = tempfile.mkdtemp(dir=workdir)
    env = {**os.environ, "PYTHONPATH": str(code_root), "PYTHONDONTWRITEBYTECODE": ""}
    env.pop("EPHQ_HOME", None)
    env.pop("EPHQ_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", WORKLOAD, home, phase, str(n)],
        env=env,
        # `python -c` puts its working directory first on sys.path: from this tree's root,
        # both sides would import this tree's ephq whatever PYTHONPATH says.
        cwd=code_root,
        capture_output=True,
        text=True,
        check=True,
    )
    subprocess.run(["rm", "-rf", home], check=True)
    return float(json.loads(done.stdout)["rate"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the git revision to compare with")
    parser.add_argument("--workdir", default=None, help="where the homes go (default: /tmp)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--only", nargs="*", default=None, help="just these workloads")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="ephq-bench-features-", dir=args.workdir)
    rates: dict[tuple[str, str], list[float]] = {}
    with checked_out(args.baseline, workdir) as baseline:
        for _ in range(args.reps):
            for phase in _chosen(BOTH, args.only):
                for label, code in (("baseline", baseline), ("this", ROOT)):
                    rate = run_once(code, workdir, phase, args.n)
                    rates.setdefault((phase, label), []).append(rate)
            for phase in _chosen(THIS_ONLY, args.only):
                rates.setdefault((phase, "this"), []).append(run_once(ROOT, workdir, phase, args.n))
    print(report(rates, args))


def _chosen(phases: tuple[str, ...], only: list[str] | None) -> tuple[str, ...]:
    return phases if only is None else tuple(p for p in phases if p in only)


def report(rates: dict[tuple[str, str], list[float]], args: argparse.Namespace) -> str:
    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"

    plain = statistics.median(rates.get(("enqueue", "this"), [1.0]))
    dequeue = statistics.median(rates.get(("dequeue_ack", "this"), [1.0]))
    lines = [
        f"# features: {args.reps} reps of {args.n} messages, file backend, durable; "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}",
        "",
        f"| workload | {args.baseline[:10]} msg/s | this tree msg/s | ratio |",
        "|---|---|---|---|",
    ]
    for phase in _chosen(BOTH, args.only):
        before, after = rates[(phase, "baseline")], rates[(phase, "this")]
        ratio = statistics.median(after) / statistics.median(before)
        lines.append(f"| {phase} | {cell(before)} | {cell(after)} | {ratio:.2f}x |")
    for phase in _chosen(THIS_ONLY, args.only):
        after = rates[(phase, "this")]
        base, of = (plain, "enqueue") if "dequeue" not in phase else (dequeue, "dequeue_ack")
        lines.append(
            f"| {phase} | | {cell(after)} | {statistics.median(after) / base:.2f}x of {of} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
