"""A small benchmark harness: repeats, medians, a table and a JSON record.

Every benchmark records, for a named case, the median of several timed runs
of the function under test and of its baselines, and reports the ratios in
the same run (times on this shared machine drift; ratios taken in one run
are what means something). Where a case compares several functions,
``interleaved_times`` measures them in alternating rounds and keeps each
one's lowest round median.
"""

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def median_time(fn, repeat=7, warmup=1, min_time=0.0, clock=time.perf_counter):
    """Median time of ``fn()`` over `repeat` runs after `warmup` runs.

    With `min_time`, each run repeats ``fn`` until at least that many seconds
    have passed and reports the time per call (for very short calls).
    `clock` reads the time: wall time by default; ``time.thread_time`` (the
    calling thread's processor time, user and system, page faults included)
    for single-threaded calls on a shared machine, where the time a call
    spends descheduled would otherwise count, and count more often against
    the longer of two calls compared.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        calls = 0
        t0 = clock()
        while True:
            fn()
            calls += 1
            dt = clock() - t0
            if dt >= min_time:
                break
        times.append(dt / calls)
    return float(np.median(times))


def interleaved_times(fns, rounds=3, repeat=5, min_time=0.0, clock=time.perf_counter):
    """Seconds per call of every function in the dict `fns`, measured in
    interleaved rounds: each round takes the median of `repeat` runs of every
    function in turn, and each function's time is its lowest round median.

    On a shared machine a disturbance lasts a while; interleaving exposes
    every function (the roofline included) to the same conditions, and the
    lowest round median is the least disturbed estimate of each. `clock`:
    as for ``median_time``."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], median_time(fn, repeat, min_time=min_time,
                                                     clock=clock))
    return best


def machine():
    """A description of this machine and software for the record."""
    import scipy

    import zilla_muf

    info = zilla_muf.openmp_info(-1)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "zilla_muf": zilla_muf.__version__,
        "openmp": info["openmp"],
        "platform": platform.platform(),
    }


class Report:
    """Rows of (case, name, seconds, ratio vs reference) for one suite."""

    def __init__(self, suite):
        self.suite = suite
        self.rows = []

    def add(self, case, name, seconds, reference=None, **extra):
        row = {"case": case, "name": name, "seconds": seconds}
        if reference is not None:
            row["ratio"] = seconds / reference
        row.update(extra)
        self.rows.append(row)
        progress(f"{case}: {name} {seconds * 1e3:.3f} ms"
                 + (f" ({row['ratio']:.2f}x ref)" if reference is not None else ""))
        return row

    def table(self):
        lines = [f"{'case':48s} {'name':36s} {'ms':>10s} {'ratio':>8s}"]
        for r in self.rows:
            ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
            lines.append(f"{r['case']:48s} {r['name']:36s} "
                         f"{r['seconds'] * 1e3:10.3f} {ratio:>8s}")
        return "\n".join(lines)

    def save(self, path=None):
        RESULTS.mkdir(exist_ok=True)
        path = Path(path) if path else RESULTS / f"{self.suite}.json"
        path.write_text(json.dumps(
            {"suite": self.suite, "machine": machine(), "rows": self.rows},
            indent=1))
        return path


def progress(msg):
    print(msg, file=sys.stderr, flush=True)
