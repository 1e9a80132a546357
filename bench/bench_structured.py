"""Benchmarks of the structured matvecs and fft_conv against NumPy / SciPy.

Cases (ratios < 1 mean zilla_muf is faster than the baseline):

- cauchy_matvec, 256 channels x 32 poles x 4096 nodes, complex64, against the
  broadcast NumPy formula ``(w / (z[..., :, None] - lam[..., None, :])).sum(-1)``;
- vandermonde_matvec, same sizes, against the NumPy
  ``einsum(w, exp(log(lam) * l))``;
- fft_conv, 64 channels x 65536 samples, full-length kernels, against
  ``scipy.signal.fftconvolve`` followed by truncation;
- toeplitz_matvec(method="auto") against the faster of "direct" and "fft",
  over a sweep of kernel lengths;
- semiseparable_matvec against the dense ``semiseparable_matrix(...) @ x``.

Each is run with workers=1 and workers=2. Run: ``python bench/bench_structured.py``
(``--quick`` for fewer repeats). Writes ``bench/results/structured.json``.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.signal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Report, median_time  # noqa: E402

import zilla_muf  # noqa: E402


def bench_cauchy(report, repeat):
    rng = np.random.default_rng(0)
    B, N, L = 256, 32, 4096
    z = np.exp(2j * np.pi * rng.uniform(size=(B, L))).astype(np.complex64)
    lam = (-0.5 + 1j * rng.uniform(-10, 10, (B, N))).astype(np.complex64)
    w = (rng.standard_normal((B, N)) + 1j * rng.standard_normal((B, N))).astype(np.complex64)
    case = f"cauchy {B}x{N}x{L} c64"
    ref = median_time(lambda: (w[:, None, :] / (z[:, :, None] - lam[:, None, :])).sum(-1),
                      repeat=repeat)
    report.add(case, "numpy broadcast", ref)
    for workers in (1, 2):
        t = median_time(lambda: zilla_muf.cauchy_matvec(z, lam, w, workers=workers),
                        repeat=repeat)
        report.add(case, f"cauchy_matvec workers={workers}", t, ref)


def bench_vandermonde(report, repeat):
    rng = np.random.default_rng(1)
    B, N, L = 256, 32, 4096
    lam = (np.exp(-rng.uniform(0.001, 0.1, (B, N)) + 1j * rng.uniform(-np.pi, np.pi, (B, N)))
           ).astype(np.complex64)
    w = (rng.standard_normal((B, N)) + 1j * rng.standard_normal((B, N))).astype(np.complex64)
    l = np.arange(L, dtype=np.float32)
    case = f"vandermonde {B}x{N}x{L} c64"

    def numpy_ref():
        return np.einsum("bn,bnl->bl", w, np.exp(np.log(lam)[..., None] * l))

    ref = median_time(numpy_ref, repeat=repeat)
    report.add(case, "numpy exp(log) einsum", ref)
    for workers in (1, 2):
        t = median_time(lambda: zilla_muf.vandermonde_matvec(lam, w, L, workers=workers),
                        repeat=repeat)
        report.add(case, f"vandermonde_matvec workers={workers}", t, ref)
    v = (rng.standard_normal((B, L)) + 1j * rng.standard_normal((B, L))).astype(np.complex64)
    case = f"vandermonde_rmatvec {B}x{N}x{L} c64"
    ref = median_time(lambda: np.einsum("bnl,bl->bn", np.exp(np.log(lam)[..., None] * l), v),
                      repeat=repeat)
    report.add(case, "numpy exp(log) einsum", ref)
    for workers in (1, 2):
        t = median_time(lambda: zilla_muf.vandermonde_rmatvec(lam, v, workers=workers),
                        repeat=repeat)
        report.add(case, f"vandermonde_rmatvec workers={workers}", t, ref)


def bench_fft_conv(report, repeat):
    rng = np.random.default_rng(2)
    C, n = 64, 65536
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((C, n)).astype(dtype)
        k = rng.standard_normal((C, n)).astype(dtype)
        case = f"fft_conv {C}x{n} K={n} {np.dtype(dtype).name}"
        ref = median_time(lambda: scipy.signal.fftconvolve(x, k, axes=-1)[:, :n],
                          repeat=repeat)
        report.add(case, "scipy.signal.fftconvolve + truncate", ref)
        for workers in (1, 2):
            t = median_time(lambda: zilla_muf.fft_conv(x, k, workers=workers),
                            repeat=repeat)
            report.add(case, f"fft_conv workers={workers}", t, ref)


def bench_toeplitz_sweep(report, repeat):
    """Time direct, fft and auto; return the worst ratio of auto's choice.

    The choice is judged by the time of the method "auto" picks over the
    faster one, both from the same measurements (re-timing the same code
    under "auto" on a shared machine measures mostly noise); the measured
    "auto" row is recorded too.
    """
    from zilla_muf.structured import _toeplitz_auto_direct

    rng = np.random.default_rng(3)
    worst = 0.0
    for dtype, C, n in ((np.float32, 64, 8192), (np.float64, 8, 32768),
                        (np.complex64, 64, 4096)):
        x = rng.standard_normal((C, n)).astype(dtype)
        for K in (2, 8, 16, 24, 32, 48, 64, 256):
            k = rng.standard_normal((C, K)).astype(dtype)
            case = f"toeplitz {C}x{n} K={K} {np.dtype(dtype).name}"
            for workers in (1, 2):
                times = {m: median_time(
                    lambda m=m: zilla_muf.toeplitz_matvec(k, x, method=m, workers=workers),
                    repeat=repeat) for m in ("direct", "fft", "auto")}
                best = min(times["direct"], times["fft"])
                picked = "direct" if _toeplitz_auto_direct(
                    n, K, np.dtype(dtype), workers, C) else "fft"
                report.add(case, f"direct w={workers}", times["direct"], best)
                report.add(case, f"fft w={workers}", times["fft"], best)
                report.add(case, f"auto ({picked}) w={workers}", times["auto"], best)
                report.add(case, f"auto's choice w={workers}", times[picked], best)
                worst = max(worst, times[picked] / best)
    return worst


def bench_semiseparable(report, repeat):
    rng = np.random.default_rng(4)
    B, n, r = 4, 2048, 16
    a = rng.uniform(0.9, 1.0, (B, n)).astype(np.float32)
    Bm = rng.standard_normal((B, n, r)).astype(np.float32)
    Cm = rng.standard_normal((B, n, r)).astype(np.float32)
    x = rng.standard_normal((B, n)).astype(np.float32)
    case = f"semiseparable {B}x{n} r={r} f32"
    M = zilla_muf.semiseparable_matrix(a, Bm, Cm)
    ref = median_time(lambda: np.einsum("bij,bj->bi", M, x), repeat=repeat)
    report.add(case, "dense M @ x (M formed beforehand)", ref)
    for workers in (1, 2):
        t = median_time(lambda: zilla_muf.semiseparable_matvec(a, Bm, Cm, x, workers=workers),
                        repeat=repeat)
        report.add(case, f"semiseparable_matvec workers={workers}", t, ref)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--only", nargs="+", choices=sorted(CASES),
                        help="run only these cases")
    args = parser.parse_args(argv)
    repeat = 3 if args.quick else 7
    report = Report("structured")
    worst = None
    for name in args.only or list(CASES):
        result = CASES[name](report, repeat)
        if name == "toeplitz":
            worst = result
    print(report.table())
    if worst is not None:
        print(f"\ntoeplitz auto: worst ratio of its choice to the faster method {worst:.2f}")
    print(f"saved {report.save()}")


CASES = {
    "cauchy": bench_cauchy,
    "vandermonde": bench_vandermonde,
    "fft_conv": bench_fft_conv,
    "toeplitz": bench_toeplitz_sweep,
    "semiseparable": bench_semiseparable,
}


if __name__ == "__main__":
    main()
