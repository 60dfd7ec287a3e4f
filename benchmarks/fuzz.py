"""A longer schemathesis run than the suite's: every operation of the OpenAPI schema, many
generated requests each, with an admin key. Writes the "fuzz" section of docs/BENCHMARKS.md.

    .venv/bin/python -m benchmarks.fuzz [--examples 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

from benchmarks.common import PROJECT_ROOT, machine, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=300, help="generated cases per operation")
    args = parser.parse_args()
    started = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:warnings",
            "tests/api/test_schema_fuzz.py",
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "FUZZ_EXAMPLES": str(args.examples)},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "no output"
    failures = [line[2:].strip() for line in run.stdout.splitlines() if line.startswith("E ")]
    body = "\n".join(
        [
            "## API fuzzing (schemathesis)",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, with",
            f"`.venv/bin/python -m benchmarks.fuzz --examples {args.examples}`: every operation",
            "of the live OpenAPI schema, up to that many generated requests each (admin key,",
            "a registered model), checked for 5xx, undocumented status codes, content types and",
            "response bodies that do not match the schema.",
            "",
            f"Result: **{'no failures' if run.returncode == 0 else 'FAILURES'}** ({summary},"
            f" {seconds:.0f} s).",
            *(["", "```", *failures[:40], "```"] if failures else []),
        ]
    )
    write_section("fuzz", body + "\n")
    print(body)
    sys.exit(run.returncode)


if __name__ == "__main__":
    main()
