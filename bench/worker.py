"""Throughput and pick-up latency of `ephq worker`.

    python bench/worker.py [--messages 400] [--reps 3] [--workdir DIR] [--baseline REV]

- Throughput: messages per second through `ephq worker --exec true --drain` at concurrency 1,
  2 and 4, from the worker's start to its exit (so start-up is included), over a backlog; and
  the floor, in the same run: a loop starting `/bin/sh -c true` with its stdin and stderr
  piped (posix_spawn, the cheapest way Python has), writing a message to it and waiting; for
  concurrency N, N such loops in N processes at once (what the machine's cores allow).
- Scaling: the same with a handler that waits (`sleep 0.01`, as one that calls a service
  does) at concurrency 1, 2, 4 and 8, against concurrency 1 and against N loops of it.
- With --baseline REV: instead, the worker of REV (a git worktree) and of this tree, each
  started as `python -m ephq` from its own tree, taking turns with the floor, at each
  concurrency: how a change moved the worker, side by side in one run.
- Pick-up latency: an idle worker (`--exec 'date +%s%N'`), one message enqueued at a time; the
  time from just before the enqueue call to the handler's first instruction. The handler's
  clock reading costs one exec of date(1) (~1 ms), which is included.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from baseline import ROOT, checked_out

from ephq import Queue

EPHQ = str(Path(sys.executable).parent / "ephq")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def throughput(
    home: str, messages: int, concurrency: int, command: str = "true", tree: Path | None = None
) -> float:
    """Messages a second through the worker: the installed `ephq`, or `python -m ephq` from
    tree (a checkout), started in home so that nothing else is imported."""
    q = Queue(home)
    q.enqueue_many("bench", [{"n": n} for n in range(messages)])
    # Its bytecode cached, as an install has it (a machine that sets this variable would
    # compile ephq at every start, about 0.1 s).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["EPHQ_HOME"] = home
    launcher = [EPHQ]
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
        launcher = [sys.executable, "-m", "ephq"]
    worker = ["worker", "bench", "--exec", command, "--drain", "--concurrency", str(concurrency)]
    start = time.perf_counter()
    subprocess.run([*launcher, *worker], env=env, cwd=home, stderr=subprocess.DEVNULL, check=True)
    elapsed = time.perf_counter() - start
    assert q.stats("bench").ready == 0
    return messages / elapsed


def floors(messages: int, loops: int, command: str = "true") -> float:
    """Handlers per second with nothing but starting them, in loops processes at once."""
    if loops == 1:
        return floor(messages, command)
    with multiprocessing.Pool(loops) as pool:
        start = time.perf_counter()
        pool.starmap(floor, [(messages // loops, command)] * loops)
        return messages // loops * loops / (time.perf_counter() - start)


def floor(messages: int, command: str = "true") -> float:
    """Handlers per second with nothing but starting them: the most a worker could do."""
    payload = b'{"n": 1}'
    start = time.perf_counter()
    for _ in range(messages):
        stdin_read, stdin_write = os.pipe2(os.O_CLOEXEC)
        stderr_read, stderr_write = os.pipe2(os.O_CLOEXEC)
        pid = os.posix_spawn(
            "/bin/sh",
            ["/bin/sh", "-c", command],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin_read, 0),
                (os.POSIX_SPAWN_DUP2, stderr_write, 2),
            ],
            setsid=True,
        )
        os.close(stdin_read)
        os.close(stderr_write)
        try:
            os.write(stdin_write, payload)
        except BrokenPipeError:
            pass
        os.close(stdin_write)
        while os.read(stderr_read, 65536):
            pass
        os.close(stderr_read)
        os.waitpid(pid, 0)
    return messages / (time.perf_counter() - start)


def pickup(home: str, count: int) -> list[float]:
    log = Path(home) / "started"
    env = {**os.environ, "EPHQ_HOME": home}
    worker = subprocess.Popen(
        [EPHQ, "worker", "idle", "--exec", f"date +%s%N >> {log}"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    q = Queue(home)
    latencies = []
    try:
        time.sleep(1.0)  # let it start and go idle
        for n in range(count):
            before = len(log.read_text().split()) if log.exists() else 0
            sent = time.time_ns()
            q.enqueue("idle", n)
            while (len(log.read_text().split()) if log.exists() else 0) == before:
                time.sleep(0.001)
            started = int(log.read_text().split()[-1])
            latencies.append((started - sent) / 1e6)
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    return latencies


CONCURRENCY = (1, 2, 4)
WAITING_CONCURRENCY = (1, 2, 4, 8)
WAITING_HANDLER = "sleep 0.01"


@dataclass
class Measured:
    floors: dict[int, list[float]]  # concurrency -> floor rates, one per rep
    rates: dict[int, list[float]]  # concurrency -> worker rates with `true`
    waiting: dict[int, list[float]]  # concurrency -> worker rates with WAITING_HANDLER
    waiting_floors: dict[int, list[float]]  # concurrency -> N loops of WAITING_HANDLER
    latencies: list[float]  # pick-up, milliseconds


def measure(
    messages: int, waiting_messages: int, reps: int, pickups: int, workdir: str
) -> Measured:
    """Each rate over reps, side by side in each rep, and pick-up latencies."""
    base = tempfile.mkdtemp(prefix="ephq-bench-worker-", dir=workdir)
    found = Measured(
        {c: [] for c in CONCURRENCY},
        {c: [] for c in CONCURRENCY},
        {c: [] for c in WAITING_CONCURRENCY},
        {c: [] for c in WAITING_CONCURRENCY},
        [],
    )
    try:
        for rep in range(reps):
            for concurrency in CONCURRENCY:
                found.floors[concurrency].append(floors(messages, concurrency))
                home = os.path.join(base, f"t{rep}-{concurrency}")
                found.rates[concurrency].append(throughput(home, messages, concurrency))
            for concurrency in WAITING_CONCURRENCY:
                found.waiting_floors[concurrency].append(
                    floors(waiting_messages, concurrency, WAITING_HANDLER)
                )
                home = os.path.join(base, f"w{rep}-{concurrency}")
                rate = throughput(home, waiting_messages, concurrency, WAITING_HANDLER)
                found.waiting[concurrency].append(rate)
        found.latencies = pickup(os.path.join(base, "pickup"), pickups)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return found


def against(baseline: str, messages: int, reps: int, workdir: str) -> str:
    """The worker of baseline and of this tree, taking turns with the floor: a table of each
    as a multiple of the floor's rate in the same rep, and this tree against baseline."""
    base = tempfile.mkdtemp(prefix="ephq-bench-worker-", dir=workdir)
    ratios: dict[tuple[str, int], list[float]] = {}
    try:
        with checked_out(baseline, base) as old:
            for rep in range(reps):
                for concurrency in CONCURRENCY:
                    the_floor = floor(messages)
                    for side, tree in (("baseline", old), ("this tree", ROOT)):
                        home = os.path.join(base, f"{side}-{rep}-{concurrency}")
                        rate = throughput(home, messages, concurrency, tree=tree)
                        ratios.setdefault((side, concurrency), []).append(rate / the_floor)
                        shutil.rmtree(home, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    lines = [
        f"| concurrency | {baseline} / the floor | this tree / the floor "
        f"| this tree / {baseline} |",
        "|---|---|---|---|",
    ]
    for concurrency in CONCURRENCY:
        old_r, new_r = ratios[("baseline", concurrency)], ratios[("this tree", concurrency)]
        gain = statistics.median(new_r) / statistics.median(old_r)
        lines.append(f"| {concurrency} | {_ratios(old_r)} | {_ratios(new_r)} | {gain:.2f} |")
    return "\n".join(lines)


def _ratios(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def table(found: Measured) -> str:
    lines = [
        "| concurrency | the floor: N loops of sh -c true, msgs/s | ephq worker --exec true, "
        "msgs/s median (min-max) | / the floor at 1 | / the floor at N |",
        "|---|---|---|---|---|",
    ]
    base = statistics.median(found.floors[1])
    for concurrency, values in found.rates.items():
        at_n = statistics.median(found.floors[concurrency])
        lines.append(
            f"| {concurrency} | {_spread(found.floors[concurrency])} | {_spread(values)} "
            f"| {statistics.median(values) / base:.2f} | {statistics.median(values) / at_n:.2f} |"
        )
    one = statistics.median(found.waiting[1])
    lines += [
        "",
        f"| concurrency | the floor: N loops of sh -c '{WAITING_HANDLER}', msgs/s "
        f"| ephq worker --exec '{WAITING_HANDLER}', msgs/s median (min-max) "
        "| / concurrency 1 | / the floor at N |",
        "|---|---|---|---|---|",
    ]
    for concurrency, values in found.waiting.items():
        at_n = statistics.median(found.waiting_floors[concurrency])
        lines.append(
            f"| {concurrency} | {_spread(found.waiting_floors[concurrency])} | {_spread(values)} "
            f"| {statistics.median(values) / one:.2f} | {statistics.median(values) / at_n:.2f} |"
        )
    latencies = found.latencies
    if latencies:  # none measured with --pickups 0
        lines += [
            "",
            f"pick-up latency, enqueue to handler start, {len(latencies)} messages: "
            f"p50 {statistics.median(latencies):.1f} ms, p90 {percentile(latencies, 90):.1f} ms, "
            f"p99 {percentile(latencies, 99):.1f} ms, max {max(latencies):.1f} ms",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400)
    # Enough that the worker's start-up (~0.2 s) is not most of the time at concurrency 8.
    parser.add_argument("--waiting-messages", type=int, default=400)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pickups", type=int, default=60)
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--baseline", metavar="REV", help="compare with the worker of REV")
    args = parser.parse_args()
    if args.baseline:
        print(
            f"ephq worker --exec true --drain, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} "
            f"CPUs, {args.messages} messages, {args.reps} repetitions, against {args.baseline}"
        )
        print()
        print(against(args.baseline, args.messages, args.reps, args.workdir))
        return
    found = measure(args.messages, args.waiting_messages, args.reps, args.pickups, args.workdir)
    print(
        f"ephq worker, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
        f"{args.messages} messages, {args.reps} repetitions"
    )
    print()
    print(table(found))


if __name__ == "__main__":
    main()
