"""ephq against its peers and against the floor the file system allows, side by side in one run.

    pip install -e '.[bench]'            # the peers: persist-queue, dirq, litequeue, huey
    python bench/run.py --quick          # a few minutes
    python bench/run.py                  # the full run
    python bench/run.py --workdir /dev/shm   # or any file system to compare

Phases, in this order (so that the file systems' costs of freed inodes, see the README, fall
on the phases that cause them and not on the ones before):
- the command line's start-up against `python -c "import typer"` (cli.py), and the worker's
  throughput and pick-up latency (worker.py);
- depth: every system (one per kind: the durable variants) is filled to 1,000, 100,000 and
  1,000,000 messages (--quick: 1,000 and 20,000; dirq and huey's FileStorage, whose puts
  take ~200 µs of Python each, stop at 100,000), the disk is synced, then get+ack is timed
  in a long-lived process (N operations, or DEPTH_BUDGET_S seconds where a get lists the
  whole queue) and as a fresh process (the CLI case);
- for every system (see systems.py), repeated --reps times: enqueue N; drain N with get+ack by
  one consumer; enqueue N again into the drained queue (where a long-lived ephq producer refills
  the files its acks kept); drain N with 4 consumer processes, counting duplicates and losses;
  steady state: put+get+ack one at a time over a backlog of 10. In the one-process phases the
  systems take turns in chunks of 50 operations (see interleaved), so what one leaves behind on
  the file system falls on all of them alike. Then a batch of 1,000 (--quick: 300) in one call,
  for the systems that have one (ephq's enqueue_many, SQLite's executemany in a transaction),
  and `ephq enqueue --lines` of 100,000 lines (--quick: 10,000), durable and --no-fsync.
Rates are messages per second, median (min-max) over repetitions; latencies are median, P90 and
P99 over all repetitions; "x ephq" is this system's time per message divided by ephq's (durable)
— below 1 is faster than ephq.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli
import worker
from placement import spread_out
from systems import available, number, open_client, payload

from ephq import EphqError

Result = dict[str, Any]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def get_ack(client: Any) -> None:
    got = client.get()
    assert got is not None, "the queue ran dry"
    client.ack(got[0])


def _get_ack_nth(client: Any, _: int) -> None:
    get_ack(client)


# Systems take turns in chunks of this many operations in the single-process phases.
CHUNK = 50


def interleaved(
    clients: dict[str, Any], n: int, op: Callable[[Any, int], object]
) -> dict[str, list[float]]:
    """Time n calls of op on every client, the systems taking turns in chunks of CHUNK.

    On a shared file system one system's work changes the next one's costs (freed inodes slow
    creates, queued discards slow flushes); taking turns in small chunks, each chunk starting
    with another system, spreads that over all of them instead of favouring whoever runs first.
    """
    names = list(clients)
    times: dict[str, list[float]] = {name: [] for name in names}
    for turn, start in enumerate(range(0, n, CHUNK)):
        k = turn % len(names)
        for name in names[k:] + names[:k]:
            client = clients[name]
            for i in range(start, min(n, start + CHUNK)):
                began = time.perf_counter()
                op(client, i)
                times[name].append(time.perf_counter() - began)
    return times


def phase_enqueue_drain(
    systems: list[str], base: str, n: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]:
    """Enqueue n, drain them, and enqueue n again into the drained queue (where ephq refills
    the files its acks kept: docs/design.md, "A flush of data alone")."""
    clients = {s: open_client(s, os.path.join(base, _slug(s))) for s in systems}
    put = interleaved(clients, n, lambda client, i: client.put(payload(i)))
    drain = interleaved(clients, n, lambda client, _: get_ack(client))
    again = interleaved(clients, n, lambda client, i: client.put(payload(n + i)))
    for client in clients.values():
        client.close()
    return put, drain, again


def _consume(system: str, path: str, out: Any, ready: Any) -> None:
    client = open_client(system, path)
    ready.wait()
    seen, times, idle = [], [], 0
    while idle < 5:
        start = time.perf_counter()
        got = client.get()
        if got is None:
            idle += 1
            time.sleep(0.05)
            continue
        idle = 0
        client.ack(got[0])
        times.append(time.perf_counter() - start)
        seen.append(number(got[1]))
    client.close()
    out.put((seen, times))


def phase_four_consumers(system: str, path: str, n: int) -> tuple[float, int, int, list[float]]:
    """Rate, duplicates, losses and per-message latencies when four processes drain n."""
    client = open_client(system, path)
    for i in range(n):
        client.put(payload(i))
    client.close()
    ctx = multiprocessing.get_context("fork")
    out, ready = ctx.Queue(), ctx.Barrier(5)
    procs = [ctx.Process(target=_consume, args=(system, path, out, ready)) for _ in range(4)]
    for p in procs:
        p.start()
    ready.wait()  # the clock starts once every process has started and opened its client
    start = time.perf_counter()
    reports = [out.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - start - 5 * 0.05  # the consumers' closing idle polls
    for p in procs:
        p.join(timeout=60)
    seen = Counter(x for numbers, _ in reports for x in numbers)
    duplicates = sum(c - 1 for c in seen.values() if c > 1)
    lost = sum(1 for i in range(n) if i not in seen)
    return n / max(elapsed, 1e-9), duplicates, lost, [t for _, ts in reports for t in ts]


def _produce(system: str, path: str, first: int, count: int, out: Any, ready: Any) -> None:
    client = open_client(system, path)
    ready.wait()
    times = []
    for i in range(first, first + count):
        start = time.perf_counter()
        client.put(payload(i))
        times.append(time.perf_counter() - start)
    client.close()
    out.put(times)


def phase_four_producers(system: str, path: str, n: int) -> tuple[float, int, int, list[float]]:
    """Rate and per-message latencies when four processes enqueue n/4 each at once: what
    durable producers gain from sharing flushes (the duplicates and losses columns: 0, 0)."""
    open_client(system, path).close()  # created before the clock starts
    ctx = multiprocessing.get_context("fork")
    out, ready = ctx.Queue(), ctx.Barrier(5)
    share = n // 4
    procs = [
        ctx.Process(target=_produce, args=(system, path, k * share, share, out, ready))
        for k in range(4)
    ]
    for p in procs:
        p.start()
    ready.wait()  # as in phase_four_consumers: forks and opens are not the producers' rate
    start = time.perf_counter()
    reports = [out.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join(timeout=60)
    return 4 * share / max(elapsed, 1e-9), 0, 0, [t for ts in reports for t in ts]


def phase_steady(systems: list[str], base: str, m: int) -> dict[str, list[float]]:
    clients = {s: open_client(s, os.path.join(base, _slug(s))) for s in systems}
    for client in clients.values():
        for i in range(10):
            client.put(payload(i))

    def cycle(client: Any, i: int) -> None:
        client.put(payload(10 + i))
        get_ack(client)

    times = interleaved(clients, m, cycle)
    for client in clients.values():
        client.close()
    return times


# Before each batch, os.sync(): ephq commits a batch with syncfs(2), which also writes back
# whatever else is dirty on the file system; here that was the earlier phases' files (the
# no-fsync peers', the deep queues'), and made a batch of 300 take up to 0.2 s more. Measured
# alone, the batch pays for its own bytes; on a busy file system it pays for others' too, as
# README and docs/design.md say.
BATCH_SYSTEMS = ("ephq", "ephq no-fsync", "sqlite FULL", "sqlite NORMAL")


def phase_batch(systems: list[str], base: str, size: int) -> dict[str, float]:
    """One batch of size messages per system, in one call: seconds per message."""
    seconds: dict[str, float] = {}
    for system in (s for s in systems if s in BATCH_SYSTEMS):
        client = open_client(system, os.path.join(base, _slug(system)))
        client.put(payload(0))  # the queue exists: the batch measures the batch
        batch = [payload(i) for i in range(1, size + 1)]
        os.sync()  # see the note above BATCH_SYSTEMS
        start = time.perf_counter()
        client.put_many(batch)
        seconds[system] = (time.perf_counter() - start) / size
        client.close()
    return seconds


def phase_lines(base: str, size: int) -> dict[str, float]:
    """`ephq enqueue --lines` of size lines, durable and --no-fsync: seconds per message."""
    lines = os.path.join(base, "lines.jsonl")
    Path(lines).write_bytes(b"\n".join(payload(i) for i in range(size)) + b"\n")
    ephq = str(Path(sys.executable).parent / "ephq")
    seconds: dict[str, float] = {}
    for label, flags in (("ephq --lines", []), ("ephq --lines --no-fsync", ["--no-fsync"])):
        home = os.path.join(base, _slug(label))
        env = {**os.environ, "EPHQ_HOME": home}
        os.sync()  # see the note above BATCH_SYSTEMS
        start = time.perf_counter()
        subprocess.run(
            [ephq, *flags, "enqueue", "bench", lines, "--lines"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds[label] = (time.perf_counter() - start) / size
    return seconds


def _slug(system: str) -> str:
    return system.replace(" ", "_")


# One system per kind at depth: the others share its get+ack path.
DEPTH_SYSTEMS = (
    "ephq",
    "floor",
    "sqlite FULL",
    "persist-queue",
    "dirq",
    "litequeue",
    "huey sqlite",
    "huey file",
)
# Their puts cost ~200 µs of Python each (a million: minutes), and huey's FileStorage sorts its
# whole directory on every get.
DEPTH_CAP = {"dirq": 100_000, "huey file": 100_000}
DEPTH_BUDGET_S = 5.0
FRESH_RUNS = 5


def depth_levels(quick: bool) -> tuple[int, ...]:
    return (1_000, 20_000) if quick else (1_000, 100_000, 1_000_000)


def timed_for(calls: int, budget_s: float, op: Callable[[int], object]) -> list[float]:
    """The time of each of up to `calls` calls of op; stops after budget_s (and 5 calls)."""
    times: list[float] = []
    end = time.perf_counter() + budget_s
    for i in range(calls):
        if len(times) >= 5 and time.perf_counter() > end:
            break
        start = time.perf_counter()
        op(i)
        times.append(time.perf_counter() - start)
    return times


# The operation alone, in a fresh process: a throwaway client on a scratch directory imports
# whatever the system needs before the clock starts (import time is the CLI benchmark's part).
FRESH = """
import shutil, sys, tempfile, time
sys.path[:0] = sys.argv[3:5]
from systems import open_client
scratch = tempfile.mkdtemp()
open_client(sys.argv[1], scratch + "/q").close()
shutil.rmtree(scratch)
t0 = time.perf_counter()
client = open_client(sys.argv[1], sys.argv[2])
handle, _ = client.get()
client.ack(handle)
print(time.perf_counter() - t0)
"""


def fresh_get_ack(system: str, path: str, runs: int) -> list[float]:
    here = Path(__file__).resolve().parent
    times = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", FRESH, system, path, str(here), str(here.parent)],
            capture_output=True,
            text=True,
            check=True,
            env=_with_bytecode(),
        )
        times.append(float(out.stdout))
    return times


def _with_bytecode() -> dict[str, str]:
    """An installed package has its bytecode; so should the fresh processes measured."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(workdir: str, quick: bool, reps: int, only: list[str] | None) -> Result:
    n = 300 if quick else 2000
    levels = depth_levels(quick)
    systems = [s for s in available() if only is None or s in only]
    results: Result = {
        "machine": machine(workdir),
        "n": n,
        "reps": reps,
        "systems": systems,
        "phases": {},
    }
    phases = results["phases"]

    def add(phase: str, system: str, value: Any) -> None:
        phases.setdefault(phase, {}).setdefault(system, []).append(value)

    base = tempfile.mkdtemp(prefix="ephq-bench-run-", dir=workdir)
    try:
        deep = [
            (system, depth)
            for system in systems
            if system in DEPTH_SYSTEMS
            for depth in levels
            if depth <= DEPTH_CAP.get(system, depth)
        ]
        fill_s: dict[str, float] = {}
        deep_base = os.path.join(base, "deep")
        os.mkdir(deep_base)
        spread_out(deep_base)
        for system, depth in deep:
            start = time.perf_counter()
            client = open_client(system, _depth_dir(base, system, depth))
            client.fill(depth + reps * (n + 20))
            client.close()
            fill_s[system] = fill_s.get(system, 0.0) + time.perf_counter() - start
        results["fill_s"] = fill_s
        os.sync()  # measure the queues, not the write-back of the gigabytes the fills wrote
        for _ in range(reps):
            for system, depth in deep:  # side by side, so noise falls on all alike
                path = _depth_dir(base, system, depth)
                client = open_client(system, path)
                drained = timed_for(n, DEPTH_BUDGET_S, functools.partial(_get_ack_nth, client))
                add(f"depth {depth:,}, long-lived", system, drained)
                client.close()
                add(
                    f"depth {depth:,}, fresh process",
                    system,
                    fresh_get_ack(system, path, FRESH_RUNS),
                )
        # The deep queues stay until the end: freeing millions of inodes now would slow every
        # file created in the phases below (a few hundred µs each instead of tens). So does
        # everything else a phase leaves (see interleaved).
        for rep in range(reps):
            put, drain, again = phase_enqueue_drain(systems, os.path.join(base, f"a{rep}"), n)
            for system in systems:
                add("enqueue", system, put[system])
                add("drain, 1 consumer", system, drain[system])
                add("enqueue, drained queue", system, again[system])
            # Four processes per system cannot take turns op by op: the systems take turns
            # going first instead.
            for system in systems[rep % len(systems) :] + systems[: rep % len(systems)]:
                path = os.path.join(base, f"b{rep}", _slug(system))
                add("drain, 4 consumers", system, phase_four_consumers(system, path, n))
            for system in systems[rep % len(systems) :] + systems[: rep % len(systems)]:
                path = os.path.join(base, f"p{rep}", _slug(system))
                add("enqueue, 4 producers", system, phase_four_producers(system, path, n))
            steady = phase_steady(systems, os.path.join(base, f"c{rep}"), n)
            for system in systems:
                add("steady put+get+ack", system, steady[system])
            batch_dir = os.path.join(base, f"d{rep}")
            os.mkdir(batch_dir)
            batch_size = 300 if quick else 1000
            for system, per_message in phase_batch(systems, batch_dir, batch_size).items():
                add(f"batch of {batch_size:,}", system, per_message)
            if "ephq" in systems:
                lines_size = 10_000 if quick else 100_000
                for label, per_message in phase_lines(batch_dir, lines_size).items():
                    add(f"--lines of {lines_size:,}", label, per_message)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return results


def _depth_dir(base: str, system: str, depth: int) -> str:
    return os.path.join(base, "deep", f"{_slug(system)}-{depth}")


def machine(workdir: str) -> dict[str, str]:
    line = subprocess.run(["df", "-T", workdir], capture_output=True, text=True, check=False)
    fields = line.stdout.splitlines()[-1].split() if line.stdout else ["?", "?"]
    versions = {}
    for package in ("ephq", "persist-queue", "dirq", "litequeue", "huey"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = "not installed"
    return {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "sqlite": __import__("sqlite3").sqlite_version,
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "filesystem": f"{fields[1]} at {workdir}",
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


def report(r: Result) -> str:
    m = r["machine"]
    out = [
        f"ephq and its peers, {m['date']}: {m['cpus']} CPUs, Linux {m['kernel']}, "
        f"Python {m['python']}, SQLite {m['sqlite']}, {m['filesystem']}; {m['versions']}. "
        f"N={r['n']}, {r['reps']} repetitions.",
    ]
    fills = ", ".join(f"{system} {seconds:,.0f} s" for system, seconds in r["fill_s"].items())
    out.append(f"Filling the deep queues took: {fills}.")
    ordered = sorted(r["phases"].items(), key=lambda item: item[0].startswith("depth"))
    for phase, by_system in ordered:
        out += ["", f"### {phase}", ""]
        if phase.startswith(("batch of", "--lines of")):
            out += _batch_table(by_system)
            continue
        if phase in ("drain, 4 consumers", "enqueue, 4 producers"):
            out += [
                "| system | msgs/s median (min-max) | P50 µs | P90 µs | P99 µs | duplicates | lost"
                " | x ephq |",
                "|---|---|---|---|---|---|---|---|",
            ]
            base = statistics.median(v[0] for v in by_system.get("ephq", [(1.0, 0, 0, [])]))
            for system, runs in by_system.items():
                rates = [v[0] for v in runs]
                dup, lost = sum(v[1] for v in runs), sum(v[2] for v in runs)
                pooled = [t * 1e6 for v in runs for t in v[3]] or [0.0]
                out.append(
                    f"| {system}{_no_ack(system)} | {statistics.median(rates):,.0f} "
                    f"({min(rates):,.0f}-{max(rates):,.0f}) | {statistics.median(pooled):,.0f} | "
                    f"{percentile(pooled, 90):,.0f} | {percentile(pooled, 99):,.0f} | {dup} | "
                    f"{lost} | {base / statistics.median(rates):.2f} |"
                )
            continue
        out += [
            "| system | msgs/s median (min-max) | P50 µs | P90 µs | P99 µs | x ephq |",
            "|---|---|---|---|---|---|",
        ]
        ephq_runs = by_system.get("ephq")
        ephq_time = statistics.median(x for run in ephq_runs for x in run) if ephq_runs else None
        for system, runs in by_system.items():
            rates = [len(run) / sum(run) for run in runs]
            pooled = [x for run in runs for x in run]
            ratio = "" if ephq_time is None else f"{statistics.median(pooled) / ephq_time:.2f}"
            out.append(
                f"| {system}{_no_ack(system)} | {statistics.median(rates):,.0f} "
                f"({min(rates):,.0f}-{max(rates):,.0f}) | {statistics.median(pooled) * 1e6:,.0f} | "
                f"{percentile(pooled, 90) * 1e6:,.0f} | "
                f"{percentile(pooled, 99) * 1e6:,.0f} | {ratio} |"
            )
    return "\n".join(out)


def _batch_table(by_system: dict[str, list[float]]) -> list[str]:
    """Seconds per message of one batch a repetition; against ephq's and its no-fsync twin."""
    rows = [
        "| system | µs per message, median (min-max) | x ephq | x the same without fsync |",
        "|---|---|---|---|",
    ]
    medians = {system: statistics.median(runs) for system, runs in by_system.items()}
    ephq = medians.get("ephq") or medians.get("ephq --lines")
    for system, runs in by_system.items():
        twin = {
            "ephq": "ephq no-fsync",
            "sqlite FULL": "sqlite NORMAL",
            "ephq --lines": "ephq --lines --no-fsync",
        }.get(system)
        against = f"{medians[system] / medians[twin]:.2f}" if twin in medians else ""
        ratio = "" if ephq is None else f"{medians[system] / ephq:.2f}"
        rows.append(
            f"| {system} | {medians[system] * 1e6:,.1f} ({min(runs) * 1e6:,.1f}-"
            f"{max(runs) * 1e6:,.1f}) | {ratio} | {against} |"
        )
    return rows


def summary(r: Result) -> str:
    """One row per system: its median time per message in each phase divided by ephq's.

    The depth columns are the deepest level; a system that stops earlier is shown at its own
    deepest level, which the cell names.
    """
    phases = r["phases"]

    def level(phase: str) -> int:
        return int(phase.split()[1].rstrip(",").replace(",", ""))

    depth = sorted((p for p in phases if p.startswith("depth")), key=level)
    columns = [
        "enqueue",
        "enqueue, drained queue",
        "enqueue, 4 producers",
        "drain, 1 consumer",
        "drain, 4 consumers",
        "steady put+get+ack",
    ]
    if depth:
        deepest = depth[-1].rsplit(",", 1)[0]  # "depth 1,000,000"
        columns += [f"{deepest}, long-lived", f"{deepest}, fresh process"]

    def median_s(phase: str, system: str) -> float | None:
        runs = phases.get(phase, {}).get(system)
        if not runs:
            return None
        if phase in ("drain, 4 consumers", "enqueue, 4 producers"):
            return 1 / float(statistics.median(v[0] for v in runs))
        return float(statistics.median(x for run in runs for x in run))

    def cell(phase: str, system: str) -> str:
        note = ""
        if phase.startswith("depth") and median_s(phase, system) is None:
            kind = phase.rsplit(", ", 1)[1]
            mine = [p for p in depth if p.endswith(kind) and median_s(p, system) is not None]
            if not mine:
                return ""
            phase, note = mine[-1], f" (at {mine[-1].split()[1].rstrip(',')})"
        value, ephq = median_s(phase, system), median_s(phase, "ephq")
        if value is None or ephq is None:
            return ""
        text = f"{value * 1e6:,.0f} µs" if system == "ephq" else f"{value / ephq:.2f}"
        if phase in ("drain, 4 consumers", "enqueue, 4 producers"):
            duplicates = sum(v[1] for v in phases[phase][system])
            text += f", {duplicates} dup." if duplicates else ""
        return text + note

    out = ["| system | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for system in r["systems"]:
        cells = " | ".join(cell(phase, system) for phase in columns)
        out.append(f"| {system}{_no_ack(system)} | {cells} |")
    return "\n".join(out)


def _no_ack(system: str) -> str:
    return " (no ack)" if system.startswith("huey") else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--only", nargs="*", help="just these systems")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    if not os.path.isdir(args.workdir):  # found before the first phase, not after two
        parser.error(f"--workdir {args.workdir}: no such directory")
    start = time.perf_counter()
    # First, while the file system has freed few inodes (see the module's note on order).
    command_line = cli.table(cli.measure(10 if args.quick else 30))
    # Enough messages that the worker's start-up (about 100 ms) does not decide its rate.
    messages, waiting, pickups = (1000, 100, 30) if args.quick else (3000, 400, 60)
    workers = worker.table(worker.measure(messages, waiting, args.reps, pickups, args.workdir))
    results = run(args.workdir, args.quick, args.reps, args.only)
    if args.json:
        Path(args.json).write_text(json.dumps(results))
    print(report(results), flush=True)
    print("\n### summary: ephq's time per message, and each system's as a multiple of it\n")
    print(summary(results), flush=True)
    print("\n### the command line\n")
    print(command_line)
    print("\n### the worker (`ephq worker --exec true --drain`)\n")
    print(workers)
    print(f"\n(the whole run took {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    # A full disk under --workdir (say) stops the run with one line, not a traceback.
    try:
        main()
    except EphqError as exc:
        sys.exit(f"bench/run.py: {exc}; the run stopped")
    except subprocess.CalledProcessError as exc:  # the command's own line is already shown
        args = " ".join(map(str, exc.cmd))
        sys.exit(f"bench/run.py: `{args}` exited {exc.returncode}; the run stopped")
