"""A short tour: ``python -m zilla_muf``.

Computes one recurrence h_t = a_t * h_{t-1} + b_t by each algorithm of
:mod:`zilla_muf.scan` and by a NumPy loop over time, shows that they agree
and how long each took.
"""

import argparse
import os
import sys
import time

import numpy as np

import zilla_muf
from zilla_muf import associative_scan, chunked_scan, linear_scan, sequential_scan


def _best_time(fn, repeat):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _numpy_loop(a, b):
    """The recurrence as a Python loop over time, vectorised over channels."""
    h = np.empty_like(b)
    state = np.zeros(b.shape[1], dtype=b.dtype)
    for t in range(b.shape[0]):
        state = a[t] * state + b[t]
        h[t] = state
    return h


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m zilla_muf", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--channels", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    info = zilla_muf.openmp_info(args.workers)
    print(f"zilla-muf {zilla_muf.__version__} | NumPy {np.__version__} | "
          f"{os.cpu_count()} cores | OpenMP: {info['openmp']}, "
          f"{info['threads_used']} thread(s) used of {info['requested']} asked")
    print()

    rng = np.random.default_rng(0)
    C, L = args.channels, args.steps
    print(f"The recurrence h_t = a_t * h_(t-1) + b_t over {L} steps for {C} "
          f"channels (float64),")
    print("time-major: a[t, c], b[t, c], the time axis first (axis=0).")
    a = rng.uniform(0.9, 1.0, size=(L, C))
    b = rng.standard_normal((L, C))

    w = args.workers
    rows = [
        ("NumPy loop over time", lambda: _numpy_loop(a, b)),
        ("sequential_scan", lambda: sequential_scan(a, b, axis=0)),
        (f"chunked_scan(workers={w})", lambda: chunked_scan(a, b, axis=0, workers=w)),
        (f"associative_scan(workers={w})",
         lambda: associative_scan(a, b, axis=0, workers=w)),
        (f"linear_scan(workers={w})", lambda: linear_scan(a, b, axis=0, workers=w)),
    ]
    results = []
    for name, fn in rows:
        t, h = _best_time(fn, args.repeat)
        results.append((name, t, h))
    ref = results[0][2]
    scale = np.max(np.abs(ref))
    t_loop = results[0][1]
    print()
    print(f"{'method':32s} {'time (ms)':>10s} {'vs loop':>8s} {'max |diff| / max |h|':>22s}")
    for name, t, h in results:
        err = np.max(np.abs(h - ref)) / scale
        print(f"{name:32s} {1e3 * t:10.2f} {t_loop / t:7.1f}x {err:22.1e}")
    agree = all(np.allclose(h, ref, rtol=1e-10, atol=1e-10 * scale) for _, _, h in results)
    print()
    print("All methods agree to float64 rounding." if agree
          else "The methods DISAGREE: please report this.")

    # The same recurrence with the scan axis contiguous, and in reverse.
    h_rev = chunked_scan(a.T, b.T, reverse=True, workers=w)
    h_rev_ref = sequential_scan(a[::-1], b[::-1], axis=0)[::-1].T
    print("Reverse scan along a contiguous axis agrees with the flipped "
          f"forward scan: {bool(np.allclose(h_rev, h_rev_ref))}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
