"""Run every benchmark suite, then write the report (JSON, tables, plots).

    python bench/run_all.py [--full] [--only SUITE ...]

Each suite runs in its own process (so that memory peaks and thread pools of
one do not colour the next) and writes ``bench/results/<suite>.json``;
``bench/report.py`` then turns them into ``docs/_static/bench/``: a table and
a plot per suite, and time-versus-size curves of every kernel against its
baselines (and, where it applies, the memory roofline). Progress goes to stderr.

By default the suites run in their quick form (the whole run takes a few
minutes on two cores); ``--full`` uses every repeat and baseline. Suites
whose optional baselines (PyTorch, transformers) are not installed report
what they can and say what they skipped.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# suite name -> (script, arguments for the quick run, for the full run)
SUITES = {
    "scan": ("bench_scan.py", ["--repeat", "3"], ["--repeat", "5", "--rounds", "7"]),
    "scan_sweep": ("bench_scan.py", ["--sweep", "--repeat", "3"], ["--sweep", "--repeat", "7"]),
    "stable_ops": ("bench_stable_ops.py", ["--repeat", "5"], ["--repeat", "9"]),
    "structured": ("bench_structured.py", ["--quick"], []),
    "ssd": ("bench_ssd.py", ["--quick"], []),
    "selective": ("bench_selective.py", ["--quick"], []),
    "linear_attention": ("bench_linear_attention.py", ["--quick"], []),
    "decays": ("bench_decays.py", ["--quick"], []),
    "layer_grads": ("bench_layer_grads.py", ["--quick"], []),
    "sweeps": ("bench_sweeps.py", ["--repeat", "3"], ["--repeat", "5"]),
    "load": ("bench_load.py", ["--repeat", "5", "--rounds", "3"],
             ["--repeat", "7", "--rounds", "5"]),
    "dask": ("bench_dask.py", ["--repeat", "3", "--log2n", "24", "--block-log2", "20"],
             ["--repeat", "5", "--log2n", "28", "--block-log2", "24"]),
    "vjp": ("bench_vjp.py", ["--repeat", "3"], ["--repeat", "5", "--rounds", "3"]),
    "torch": ("bench_torch.py", ["--quick"], []),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="all repeats and baselines")
    parser.add_argument("--only", nargs="+", choices=sorted(SUITES), default=None)
    args = parser.parse_args(argv)
    names = args.only or list(SUITES)
    failed = []
    t_all = time.perf_counter()
    for i, name in enumerate(names, 1):
        script, quick, full = SUITES[name]
        path = HERE / script
        if not path.exists():
            print(f"[{i}/{len(names)}] {name}: {script} not found, skipped",
                  file=sys.stderr, flush=True)
            continue
        print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(path)] + (full if args.full else quick),
                              stdout=subprocess.DEVNULL)
        dt = time.perf_counter() - t0
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        print(f"[{i}/{len(names)}] {name}: {status} in {dt:.0f} s",
              file=sys.stderr, flush=True)
        if proc.returncode != 0:
            failed.append(name)
    subprocess.run([sys.executable, str(HERE / "report.py")], check=True)
    print(f"all suites: {time.perf_counter() - t_all:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
