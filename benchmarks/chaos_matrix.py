"""The chaos matrix: every fault of tests/chaos x repetitions x ticks lost x ticks duplicated, as a table.

    .venv/bin/python benchmarks/chaos_matrix.py [--reps 5] [--report .k2/chaos/matrix.json] [--no-run]

Runs the chaos suite (`pytest -m chaos tests/chaos --chaos-reps N --chaos-report PATH`), then prints what the cases
recorded. With --no-run it only prints an existing report. Each case records after its fault and recovery, before
its final assertions, so a failing case still shows its counts; a case that failed earlier has fewer repetitions
than asked for, and the pytest summary line says which.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_suite(reps: int, report: Path) -> tuple[int, float, str]:
    report.unlink(missing_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "chaos",
        "tests/chaos",
        f"--chaos-reps={reps}",
        f"--chaos-report={report}",
        "-p",
        "no:cacheprovider",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    log = report.with_suffix(".log")
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        failures = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR", "E "))]
        sys.stderr.write("\n".join(failures[:40]) + f"\nfull pytest output: {log}\n")
    return done.returncode, time.perf_counter() - started, summary


def table(rows: list[dict[str, object]]) -> str:
    faults: dict[str, dict[str, int]] = {}
    for row in rows:
        agg = faults.setdefault(
            str(row["fault"]), {"reps": 0, "produced": 0, "lost": 0, "duplicated": 0, "checked": 0, "validated": 0}
        )
        agg["reps"] += 1
        agg["produced"] += int(row["produced"])  # type: ignore[call-overload]
        agg["lost"] += int(row["lost"])  # type: ignore[call-overload]
        agg["duplicated"] += int(row["duplicated"]) + int(row["extra"])  # type: ignore[call-overload]
        if row.get("validated_exactly_once") is not None:
            agg["checked"] += 1
            agg["validated"] += int(bool(row["validated_exactly_once"]))
    lines = [
        "| fault | repetitions | ticks produced | lost | duplicated | validated_ticks exactly-once |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for fault, agg in faults.items():
        validated = f"{agg['validated']}/{agg['checked']}" if agg["checked"] else "not checked"
        lines.append(
            f"| {fault} | {agg['reps']} | {agg['produced']:,} | {agg['lost']} | {agg['duplicated']} | {validated} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--report", type=Path, default=ROOT / ".k2" / "chaos" / "matrix.json")
    parser.add_argument("--no-run", action="store_true", help="print an existing report without running the suite")
    args = parser.parse_args()
    status = ""
    if not args.no_run:
        code, seconds, summary = run_suite(args.reps, args.report)
        status = f"pytest: {summary} (exit {code}); {seconds:.0f} s wall on {os.cpu_count()} CPUs"
    if not args.report.exists():
        raise SystemExit(f"no chaos report at {args.report}: run without --no-run first")
    rows = json.loads(args.report.read_text())
    print(table(rows))
    if status:
        print(f"\n{status}")


if __name__ == "__main__":
    main()
