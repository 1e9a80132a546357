"""Benchmark softmax and log_sum_exp against SciPy and the memory roofline.

Times ``zilla_muf.softmax`` and ``zilla_muf.log_sum_exp`` over the last axis
of a (4096, 4096) array, float32 and float64, with 1 and 2 workers, against
``scipy.special.softmax`` / ``scipy.special.logsumexp`` (what a user would
call instead) and ``np.copyto`` of the same array (the bytes a softmax must
read and write at least once). Ratios are to SciPy, in the same run.

Usage: ``python bench/bench_stable_ops.py [--n 4096] [--repeat 5]``; writes
``bench/results/stable_ops.json`` and, with matplotlib, ``stable_ops.png``.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.special as sc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RESULTS, Report, median_time, progress  # noqa: E402

import zilla_muf  # noqa: E402


def run(n, repeat):
    report = Report("stable_ops")
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal((n, n)) * 4).astype(dtype)
        out = np.empty_like(x)
        out.fill(0)  # first touch outside the timings
        name = np.dtype(dtype).name
        copy_t = median_time(lambda: np.copyto(out, x), repeat=repeat)
        report.add(f"copy {n}x{n} {name}", "np.copyto (roofline)", copy_t)

        case = f"softmax {n}x{n} {name} axis=-1"
        ref = median_time(lambda: sc.softmax(x, axis=-1), repeat=repeat)
        report.add(case, "scipy.special.softmax", ref, ref)
        for w in (1, 2):
            t = median_time(lambda: zilla_muf.softmax(x, axis=-1, workers=w),
                            repeat=repeat)
            report.add(case, f"zilla_muf.softmax workers={w}", t, ref,
                       speedup=ref / t, vs_copy=t / copy_t)

        case = f"log_sum_exp {n}x{n} {name} axis=-1"
        ref = median_time(lambda: sc.logsumexp(x, axis=-1), repeat=repeat)
        report.add(case, "scipy.special.logsumexp", ref, ref)
        for w in (1, 2):
            t = median_time(lambda: zilla_muf.log_sum_exp(x, axis=-1, workers=w),
                            repeat=repeat)
            report.add(case, f"zilla_muf.log_sum_exp workers={w}", t, ref,
                       speedup=ref / t, vs_copy=t / copy_t)
    return report


def plot(report, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("matplotlib not available: no plot")
        return None
    rows = [r for r in report.rows if "speedup" in r]
    labels = [f"{r['case'].split()[0]} {r['case'].split()[2]}\n{r['name'].split()[-1]}"
              for r in rows]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(range(len(rows)), [r["speedup"] for r in rows])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("speedup over SciPy")
    ax.set_title("zilla_muf softmax / log_sum_exp vs scipy.special")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    report = run(args.n, args.repeat)
    print(report.table())
    progress(f"wrote {report.save()}")
    png = plot(report, RESULTS / "stable_ops.png")
    if png:
        progress(f"wrote {png}")


if __name__ == "__main__":
    main()
