"""Start-up of the command line: `ephq enqueue` and `ephq dequeue` against the interpreter alone.

    python bench/cli.py [--runs 30]

Times whole processes through this environment's own executables (not a pyenv shim, which adds
tens of milliseconds of its own), interleaved so that machine noise falls on all alike:
`python -c pass`, `python -c "import typer"`, `ephq enqueue`, `ephq dequeue` + `ephq ack`.
Bytecode is compiled first and allowed, as an installed package has it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def measure(runs: int) -> dict[str, list[float]]:
    """Milliseconds per whole process, for each command, runs times, interleaved."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    home = tempfile.mkdtemp(prefix="ephq-bench-cli-")
    env["EPHQ_HOME"] = home
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(root / "ephq")], check=True, env=env
    )
    message = Path(home) / "msg.json"
    message.write_text('{"to": "someone@example.com", "subject": "hello"}')
    ephq = str(BIN / "ephq")
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        'python -c "import typer"': [sys.executable, "-c", "import typer"],
        "ephq enqueue s msg.json": [ephq, "enqueue", "s", str(message)],
        "ephq dequeue s": [ephq, "dequeue", "s"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    try:
        for _ in range(3):  # warm the caches
            for argv in commands.values():
                subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=False)
        for _ in range(runs):
            for name, argv in commands.items():
                start = time.perf_counter()
                subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=False)
                times[name].append((time.perf_counter() - start) * 1000)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return times


def table(times: dict[str, list[float]]) -> str:
    typer_median = statistics.median(times['python -c "import typer"'])
    lines = [
        "| command | median ms | P90 ms | min-max ms | / import typer |",
        "|---|---|---|---|---|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(
            f"| `{name}` | {median:.1f} | {percentile(values, 90):.1f} | "
            f"{min(values):.1f}-{max(values):.1f} | {median / typer_median:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    times = measure(args.runs)
    print(
        f"ephq CLI start-up, {time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, {args.runs} interleaved runs each"
    )
    print()
    print(table(times))


if __name__ == "__main__":
    main()
