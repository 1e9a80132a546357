"""Time against size for the primitives and layers, beside their baselines.

    python bench/bench_sweeps.py [--repeat N]

For each kernel, a series of sizes, the kernel with workers 1 and 2, the
baseline a user would call instead and, for the elementwise and row
operations, the memory roofline (a NumPy copy of the same bytes). Writes
bench/results/sweeps.json, whose rows carry a ``size`` (elements of the
main input) so that bench/report.py draws them as curves of time per
element. The PyTorch baselines are skipped when torch is not installed.
(The scans have their own sweep: ``bench_scan.py --sweep``.)
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.signal
import scipy.special

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Report, median_time  # noqa: E402

import zilla_muf  # noqa: E402


def sweep_rows(report, repeat):
    """softmax and log_sum_exp over rows of 1024, float32 and float64."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        for rows in (16, 64, 256, 1024, 4096):
            x = rng.standard_normal((rows, 1024)).astype(dtype)
            out = np.empty_like(x)
            size = x.size
            for fn, ref, label in ((zilla_muf.softmax, scipy.special.softmax, "softmax"),
                                   (zilla_muf.log_sum_exp, scipy.special.logsumexp,
                                    "log_sum_exp")):
                case = f"{label} {name}, rows of 1024"
                mt = 0.02
                report.add(case, "roofline np.copyto",
                           median_time(lambda: np.copyto(out, x), repeat, min_time=mt),
                           size=size)
                report.add(case, f"scipy.special.{ref.__name__}",
                           median_time(lambda: ref(x, axis=-1), repeat, min_time=mt),
                           size=size)
                for w in (1, 2):
                    report.add(case, f"zilla_muf w={w}",
                               median_time(lambda: fn(x, axis=-1, workers=w), repeat,
                                           min_time=mt), size=size)


def sweep_structured(report, repeat):
    """Cauchy and Vandermonde products (64 channels x 32 poles) over the
    number of nodes; fft_conv over the signal length (16 channels)."""
    rng = np.random.default_rng(1)
    C, N = 64, 32
    lam = (-rng.uniform(0.01, 0.5, (C, N)) + 1j * rng.uniform(-3, 3, (C, N))).astype(np.complex64)
    wts = (rng.standard_normal((C, N)) + 1j * rng.standard_normal((C, N))).astype(np.complex64)
    for L in (256, 1024, 4096, 16384):
        z = np.exp(2j * np.pi * np.arange(L) / L).astype(np.complex64)
        size = C * L
        case = "cauchy_matvec complex64, 64 x 32 poles"
        report.add(case, "NumPy broadcast formula",
                   median_time(lambda: (wts[:, None, :] / (z[None, :, None] - lam[:, None, :])).sum(-1),
                               repeat, min_time=0.02), size=size)
        for w in (1, 2):
            report.add(case, f"zilla_muf w={w}",
                       median_time(lambda: zilla_muf.cauchy_matvec(z, lam, wts, workers=w),
                                   repeat, min_time=0.02), size=size)
        case = "vandermonde_matvec complex64, 64 x 32 poles"
        ell = np.arange(L)
        report.add(case, "NumPy exp(log) einsum",
                   median_time(lambda: np.einsum("cn,cnl->cl", wts,
                                                 np.exp(np.log(lam)[:, :, None] * ell)),
                               repeat, min_time=0.02), size=size)
        for w in (1, 2):
            report.add(case, f"zilla_muf w={w}",
                       median_time(lambda: zilla_muf.vandermonde_matvec(lam, wts, L, workers=w),
                                   repeat, min_time=0.02), size=size)
    for dtype in (np.float32, np.float64):
        for n in (1024, 4096, 16384, 65536):
            x = rng.standard_normal((16, n)).astype(dtype)
            k = rng.standard_normal(n).astype(dtype)
            case = f"fft_conv {np.dtype(dtype).name}, 16 channels, kernel as long"
            size = x.size
            report.add(case, "scipy.signal.fftconvolve + truncate",
                       median_time(lambda: scipy.signal.fftconvolve(x, k[None], axes=-1)[:, :n],
                                   repeat, min_time=0.02), size=size)
            for w in (1, 2):
                report.add(case, f"zilla_muf w={w}",
                           median_time(lambda: zilla_muf.fft_conv(x, k, workers=w),
                                       repeat, min_time=0.02), size=size)


def sweep_layers(report, repeat):
    """SSD (8 heads, 64 x 64 state) and the selective scan (dim 256,
    dstate 16) over the sequence length, float32, against mamba_ssm's
    PyTorch reference listings (loaded by bench/mamba_reference.py)."""
    from bench_selective import _torch, scan_inputs
    from bench_ssd import make_inputs, torch_runner

    torch = _torch()
    for L in (256, 512, 1024, 2048, 4096):
        inputs = make_inputs((1, L, 8, 64, 1, 64))
        size = inputs[0].size
        case = "ssd_chunk_scan_combined float32, b1 h8 64x64"
        if torch is not None:
            report.add(case, "torch ssd_minimal_discrete (chunk 64)",
                       median_time(torch_runner(inputs, 64), repeat), size=size)
        x, dt, A, B, C = inputs
        for w in (1, 2):
            report.add(case, f"zilla_muf w={w}",
                       median_time(lambda: zilla_muf.ssd_chunk_scan_combined(
                           x, dt, A, B, C, dt_softplus=True, workers=w), repeat),
                       size=size)
        report.add(case, "ssd_sequential w=2",
                   median_time(lambda: zilla_muf.ssd_sequential(
                       x, dt, A, B, C, dt_softplus=True, workers=2), repeat), size=size)
    rng = np.random.default_rng(2)
    for L in (128, 256, 512, 1024):
        args = scan_inputs(rng, np.float32, 1, 256, 16, L)
        size = args["u"].size
        case = "selective_scan float32, b1 d256 n16"
        if torch is not None:
            from mamba_reference import selective_scan_ref

            listing = selective_scan_ref()
            targs = {k: torch.from_numpy(v) for k, v in args.items()}

            def run_ref():
                with torch.no_grad():
                    return listing(**targs, delta_softplus=True)

            report.add(case, "torch selective_scan_ref", median_time(run_ref, 3), size=size)
        for w in (1, 2):
            report.add(case, f"zilla_muf w={w}",
                       median_time(lambda: zilla_muf.selective_scan(
                           **args, delta_softplus=True, workers=w), repeat), size=size)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    report = Report("sweeps")
    sweep_rows(report, args.repeat)
    sweep_structured(report, args.repeat)
    sweep_layers(report, args.repeat)
    print(f"written: {report.save()}")


if __name__ == "__main__":
    main()
