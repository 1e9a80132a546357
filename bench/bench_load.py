"""Parallel kernels on a loaded machine: workers=2 against workers=1.

A competing process keeps one core busy (a NumPy loop spinning in a
subprocess), as another user's job would. Each case then times its kernel
with ``workers=1`` and ``workers=2`` in alternating rounds (the same load
for both), each the median of the round medians, and reports the ratio w=2 / w=1: a kernel that degrades
gracefully stays at or below about 1.25 (no slower than one thread),
while a static split of the work waits on a descheduled thread.

    python bench/bench_load.py [--repeat N] [--rounds N] [--no-idle]

Cases: the scan of a 4096x1024 float64 array along each axis (time-major,
and 4096 rows of 1024 steps; written to a preallocated ``out``),
``ssd_chunk_scan_combined`` (batch 1, length 4096, 8 heads of 64, state
64, float32) and ``selective_scan`` (batch 2, 1536 channels, state 16,
length 2048, float32). By default every case is also timed without the
competing process, for reference. Writes bench/results/load.json.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Report, median_time  # noqa: E402

from zilla_muf import linear_scan, selective_scan, ssd_chunk_scan_combined  # noqa: E402

BUSY = ("import numpy as np\n"
        "x = np.random.default_rng(0).random(4096)\n"
        "while True:\n"
        "    x = np.sin(x) + 0.5\n")


class Busy:
    """A subprocess keeping one core busy while the block runs."""

    def __enter__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-c", BUSY], env=env)
        time.sleep(0.5)  # let it start spinning
        if self.proc.poll() is not None:
            raise RuntimeError("the competing process did not start")
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def cases(rng):
    """name -> function of workers."""
    out = {}
    for layout, axis in (("time-major", 0), ("rows", -1)):
        a = rng.uniform(0.9, 1.0, size=(4096, 1024))
        b = rng.standard_normal((4096, 1024))
        h = np.empty_like(a)
        out[f"linear_scan 4096x1024 float64 {layout}, out="] = (
            lambda w, a=a, b=b, h=h, axis=axis:
            linear_scan(a, b, axis=axis, workers=w, out=h))

    f32 = np.float32
    bt, L, H, P, N = 1, 4096, 8, 64, 64
    x = rng.standard_normal((bt, L, H, P)).astype(f32)
    dt = rng.uniform(0.01, 0.1, size=(bt, L, H)).astype(f32)
    A = -rng.uniform(0.5, 2.0, size=H).astype(f32)
    B = rng.standard_normal((bt, L, 1, N)).astype(f32)
    C = rng.standard_normal((bt, L, 1, N)).astype(f32)
    out["ssd_chunk_scan_combined b1 L4096 h8 p64 n64 float32"] = (
        lambda w: ssd_chunk_scan_combined(x, dt, A, B, C, 256, workers=w))

    bt, d, n, L = 2, 1536, 16, 2048
    u = rng.standard_normal((bt, d, L)).astype(f32)
    delta = rng.uniform(0.01, 0.1, size=(bt, d, L)).astype(f32)
    As = -rng.uniform(0.5, 2.0, size=(d, n)).astype(f32)
    Bs = rng.standard_normal((bt, n, L)).astype(f32)
    Cs = rng.standard_normal((bt, n, L)).astype(f32)
    out["selective_scan b2 d1536 n16 L2048 float32"] = (
        lambda w: selective_scan(u, delta, As, Bs, Cs, workers=w))
    return out


def run(report, fns, load, rounds, repeat):
    """Each round takes the median of `repeat` calls with w=1, then with
    w=2; a case's time is the median of its round medians (a typical time
    under the load, not the least disturbed one)."""
    for case, fn in fns.items():
        per = {1: [], 2: []}
        for _ in range(rounds):
            for w in (1, 2):
                per[w].append(median_time(lambda: fn(w), repeat))
        t1 = float(np.median(per[1]))
        for w in (1, 2):
            report.add(f"{case} [{load}]", f"w={w}", float(np.median(per[w])), t1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; each time is its lowest round median")
    parser.add_argument("--no-idle", action="store_true",
                        help="skip the runs without the competing process")
    args = parser.parse_args(argv)
    fns = cases(np.random.default_rng(0))
    report = Report("load")
    if not args.no_idle:
        run(report, fns, "no competing process", args.rounds, args.repeat)
    with Busy():
        run(report, fns, "one core kept busy", args.rounds, args.repeat)
    print(report.table())
    print(f"\nwritten: {report.save()}")


if __name__ == "__main__":
    main()
