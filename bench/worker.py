"""Throughput and pick-up latency of `ephq worker`.

    python bench/worker.py [--messages 400] [--reps 3] [--workdir DIR]

- Throughput: messages per second through `ephq worker --exec true --drain` at concurrency 1,
  2 and 4, from the worker's start to its exit (so start-up is included), over a backlog; and
  the floor, in the same run: a loop starting `/bin/sh -c true` with its stdin and stderr
  piped (posix_spawn, the cheapest way Python has), writing a message to it and waiting.
- Pick-up latency: an idle worker (`--exec 'date +%s%N'`), one message enqueued at a time; the
  time from just before the enqueue call to the handler's first instruction. The handler's
  clock reading costs one exec of date(1) (~1 ms), which is included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ephq import Queue

EPHQ = str(Path(sys.executable).parent / "ephq")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def throughput(home: str, messages: int, concurrency: int) -> float:
    q = Queue(home)
    q.enqueue_many("bench", [{"n": n} for n in range(messages)])
    env = {**os.environ, "EPHQ_HOME": home}
    start = time.perf_counter()
    subprocess.run(
        [EPHQ, "worker", "bench", "--exec", "true", "--drain", "--concurrency", str(concurrency)],
        env=env,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    elapsed = time.perf_counter() - start
    assert q.stats("bench").ready == 0
    return messages / elapsed


def floor(messages: int) -> float:
    """Handlers per second with nothing but starting them: the most a worker could do."""
    payload = b'{"n": 1}'
    start = time.perf_counter()
    for _ in range(messages):
        stdin_read, stdin_write = os.pipe2(os.O_CLOEXEC)
        stderr_read, stderr_write = os.pipe2(os.O_CLOEXEC)
        pid = os.posix_spawn(
            "/bin/sh",
            ["/bin/sh", "-c", "true"],
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


def measure(
    messages: int, reps: int, pickups: int, workdir: str
) -> tuple[dict[int, list[float]], list[float]]:
    """Rates at each concurrency over reps, and pick-up latencies in milliseconds."""
    base = tempfile.mkdtemp(prefix="ephq-bench-worker-", dir=workdir)
    try:
        rates: dict[int, list[float]] = {0: [], 1: [], 2: [], 4: []}
        for rep in range(reps):
            for concurrency, found in rates.items():
                if concurrency == 0:
                    found.append(floor(messages))
                    continue
                home = os.path.join(base, f"t{rep}-{concurrency}")
                found.append(throughput(home, messages, concurrency))
        latencies = pickup(os.path.join(base, "pickup"), pickups)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rates, latencies


def table(rates: dict[int, list[float]], latencies: list[float]) -> str:
    lines = ["| concurrency | msgs/s median (min-max) | / the floor |", "|---|---|---|"]
    base = statistics.median(rates[0])
    for concurrency, values in rates.items():
        label = "the floor: sh -c true, started and waited for" if concurrency == 0 else concurrency
        lines.append(
            f"| {label} | {statistics.median(values):.0f} "
            f"({min(values):.0f}-{max(values):.0f}) | {statistics.median(values) / base:.2f} |"
        )
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
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pickups", type=int, default=60)
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    args = parser.parse_args()
    rates, latencies = measure(args.messages, args.reps, args.pickups, args.workdir)
    print(
        f"ephq worker, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
        f"{args.messages} messages, {args.reps} repetitions"
    )
    print()
    print(table(rates, latencies))


if __name__ == "__main__":
    main()
