"""Benchmarks of zilla_muf.scan against the memory roofline and baselines.

The roofline of a scan is ``np.add(a, b, out=h)`` on the same arrays: it reads
`a` and `b` and writes `h` once, exactly the traffic a scan cannot avoid.
Baselines: ``scipy.signal.lfilter`` (constant decay only) and a NumPy loop
over time vectorised over channels.

    python bench/bench_scan.py [--quick] [--repeat N]

Writes bench/results/scan.json and prints a table of times and ratios. The
functions of one case (the roofline included) are timed in interleaved
rounds, each keeping its lowest round median (``_harness.interleaved_times``).

The scans write into an existing array (``out=``), as the roofline does;
rows marked "new output" return a new array, whose pages are fresh memory
that the system zeroes on first touch, and rows marked "cache on" return a
new array with the output buffer cache (``zilla_muf.buffer_cache``, off by
default) turned on, so that from the second call on it reuses memory an
earlier output freed.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.signal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Report, interleaved_times, median_time  # noqa: E402

import zilla_muf  # noqa: E402
from zilla_muf import (  # noqa: E402
    associative_scan,
    chunked_scan,
    linear_scan,
    sequential_scan,
)


def numpy_loop(a, b, out):
    """Time-major loop: one vectorised step per time index."""
    np.multiply(a[0], 0, out=out[0])
    out[0] += b[0]
    for t in range(1, a.shape[0]):
        np.multiply(a[t], out[t - 1], out=out[t])
        out[t] += b[t]
    return out


def cache_on(fn):
    """`fn` with the output buffer cache on (256 MiB): from its second call
    on, its output reuses the memory of the one before. (The cache stays
    on after the call; `fresh` turns it off.)"""
    def run():
        if zilla_muf.buffer_cache()["max_bytes"] == 0:
            zilla_muf.buffer_cache(256 << 20)
        fn()  # the output is freed here, into the cache
    return run


def fresh(fn):
    """`fn` with the output buffer cache off (the default): its outputs
    are fresh memory."""
    def run():
        if zilla_muf.buffer_cache()["max_bytes"] != 0:
            zilla_muf.buffer_cache(0)
        fn()
    return run


def make(rng, shape, dtype):
    a = rng.uniform(0.9, 1.0, size=shape).astype(dtype)
    b = rng.standard_normal(shape).astype(dtype)
    return a, b


def add_all(report, case, fns, ref, rounds, repeat, min_time=0.0):
    """Time the dict `fns` in interleaved rounds and report each against
    fns[ref] (or, when `ref` is a number, against that time)."""
    times = interleaved_times(fns, rounds, repeat, min_time)
    ref_t = times[ref] if isinstance(ref, str) else ref
    for name, t in times.items():
        report.add(case, name, t, ref_t)
    return times


def batched(report, rng, repeat, channels, steps, quick, rounds):
    """Batched: channels x steps, both layouts, float32 and float64."""
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        for layout in ("rows", "time-major"):
            shape = (channels, steps) if layout == "rows" else (steps, channels)
            axis = -1 if layout == "rows" else 0
            a, b = make(rng, shape, dtype)
            h = np.empty_like(a)
            o = np.empty_like(a)
            case = f"batched {channels}x{steps} {name} {layout}"
            fns = {"roofline np.add": lambda: np.add(a, b, out=h),
                   "np.add, new output": lambda: np.add(a, b)}
            for w in (1, 2):
                fns[f"linear_scan w={w}, out="] = (
                    lambda w=w: linear_scan(a, b, axis=axis, workers=w, out=o))
            fns["linear_scan w=2, new output"] = fresh(
                lambda: linear_scan(a, b, axis=axis, workers=2))
            fns["linear_scan w=2, cache on"] = cache_on(
                lambda: linear_scan(a, b, axis=axis, workers=2))
            fns["sequential_scan, out="] = lambda: sequential_scan(a, b, axis=axis, out=o)
            for w in (1, 2):
                fns[f"chunked_scan w={w}, out="] = (
                    lambda w=w: chunked_scan(a, b, axis=axis, workers=w, out=o))
                fns[f"associative_scan w={w}, out="] = (
                    lambda w=w: associative_scan(a, b, axis=axis, workers=w, out=o))
            times = add_all(report, case, fns, "roofline np.add", rounds, repeat)
            zilla_muf.buffer_cache(0)
            roof = times["roofline np.add"]
            if layout == "time-major" and not quick:
                out = np.empty_like(a)
                report.add(case, "NumPy loop over time",
                           median_time(lambda: numpy_loop(a, b, out), 3), roof)
            if dtype == np.float64 and not quick:
                decay = 0.95
                report.add(case, "scipy lfilter (constant a)",
                           median_time(lambda: scipy.signal.lfilter(
                               [1.0], [1.0, -decay], b, axis=axis), 3), roof)
                report.add(case, "linear_scan w=2 (constant a), out=",
                           median_time(lambda: linear_scan(decay, b, axis=axis, workers=2,
                                                           out=o), repeat), roof)


def cache_resident(report, rng, repeat, rounds):
    n = 1 << 18
    a, b = make(rng, n, np.float32)
    h = np.empty_like(a)
    o = np.empty_like(a)
    case = "one sequence 2^18 float32 (in cache)"
    fns = {"sequential_scan, out=": lambda: sequential_scan(a, b, out=o),
           "roofline np.add": lambda: np.add(a, b, out=h)}
    for w in (1, 2):
        fns[f"chunked_scan w={w}, out="] = lambda w=w: chunked_scan(a, b, workers=w, out=o)
        fns[f"associative_scan w={w}, out="] = (
            lambda w=w: associative_scan(a, b, workers=w, out=o))
    # a case of tenths of a millisecond whose data must stay in a cache that
    # other processes share: twice the rounds (one round takes under a
    # second) to find undisturbed ones for every function
    add_all(report, case, fns, "sequential_scan, out=", 2 * rounds, repeat, min_time=0.02)


def long_sequence(report, rng, repeat, rounds):
    n = 1 << 24
    a, b = make(rng, n, np.float32)
    h = np.empty_like(a)
    o = np.empty_like(a)
    case = "one sequence 2^24 float32"
    # a new array's pages are zeroed by the system on first touch: np.add
    # into a new array, and the scans returning a new array, show that
    fns = {"roofline np.add": lambda: np.add(a, b, out=h),
           "np.add, new output": lambda: np.add(a, b),
           "sequential_scan, out=": lambda: sequential_scan(a, b, out=o),
           "sequential_scan, new output": fresh(lambda: sequential_scan(a, b)),
           "sequential_scan, cache on": cache_on(lambda: sequential_scan(a, b))}
    for w in (1, 2):
        fns[f"chunked_scan w={w}, out="] = lambda w=w: chunked_scan(a, b, workers=w, out=o)
        fns[f"associative_scan w={w}, out="] = (
            lambda w=w: associative_scan(a, b, workers=w, out=o))
        fns[f"linear_scan w={w}, out="] = lambda w=w: linear_scan(a, b, workers=w, out=o)
    add_all(report, case, fns, "roofline np.add", rounds, repeat)
    zilla_muf.buffer_cache(0)


def sweep(report, rng, repeat):
    """Time per element against size: 256 channels, 2^6 .. 2^14 steps."""
    channels = 256
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        for layout in ("rows", "time-major"):
            case = f"{name}, {layout}, {channels} channels"
            axis = -1 if layout == "rows" else 0
            for log_steps in range(6, 15, 2):
                steps = 1 << log_steps
                shape = (channels, steps) if layout == "rows" else (steps, channels)
                a, b = make(rng, shape, dtype)
                h = np.empty_like(a)
                size = a.size
                mt = 0.02

                def add(label, fn, reps=repeat):
                    report.add(case, label, median_time(fn, reps, min_time=mt), size=size)

                add("roofline np.add", lambda: np.add(a, b, out=h))
                add("sequential_scan", lambda: sequential_scan(a, b, axis=axis))
                for w in (1, 2):
                    add(f"chunked_scan w={w}", lambda: chunked_scan(a, b, axis=axis, workers=w))
                add("associative_scan w=2",
                    lambda: associative_scan(a, b, axis=axis, workers=2))
                if dtype == np.float64:
                    add("scipy lfilter (constant a)",
                        lambda: scipy.signal.lfilter([1.0], [1.0, -0.95], b, axis=axis), 3)
                if layout == "time-major" and steps <= 4096:
                    out = np.empty_like(a)
                    add("NumPy loop over time", lambda: numpy_loop(a, b, out), 3)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer baselines")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; each time is its lowest round median")
    parser.add_argument("--sweep", action="store_true",
                        help="time against size instead (bench/results/scan_sweep.json)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    if args.sweep:
        report = Report("scan_sweep")
        sweep(report, rng, args.repeat)
        print(f"written: {report.save()}")
        return
    report = Report("scan")
    size = 1024 if args.quick else 4096
    rounds = 1 if args.quick else args.rounds
    batched(report, rng, args.repeat, size, size, args.quick, rounds)
    cache_resident(report, rng, args.repeat, rounds)
    long_sequence(report, rng, max(3, args.repeat // 2), rounds)
    print(report.table())
    print(f"\nwritten: {report.save()}")


if __name__ == "__main__":
    main()
