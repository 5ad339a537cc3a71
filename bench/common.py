"""Shared by the benchmarks: the bundled dataset, result tables and JSON output."""

import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")
DEFAULT_DATA_DIR = os.path.join(REPO, "runs", "main", "data")
BUNDLED_CORPUS = os.path.join(REPO, "data", "en-de.libreoffice-help.tsv.gz")


def ensure_dataset(data_dir: str) -> str:
    """Preprocesses the bundled corpus into `data_dir` unless a finished dataset is there."""
    if not os.path.exists(os.path.join(data_dir, "COMPLETED")):
        print(f"No finished dataset in {data_dir}; preprocessing the bundled corpus first.")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "preprocessing.main",
                f"--input={BUNDLED_CORPUS}",
                f"--output_dir={data_dir}",
                "--overwrite",
            ],
            check=True,
        )
    return data_dir


def run_step(title: str, argv: list[str]) -> None:
    """Runs one set-up step as a child process, with a line as it starts and ends."""
    print(f"{title} ...", flush=True)
    started = time.time()
    subprocess.run(argv, check=True)
    print(f"{title}: done in {time.time() - started:.0f} s", flush=True)


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def write_json(name: str, payload: dict) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"machine": machine(), **payload}, f, indent=2)
    return path
