"""Benchmark every pullback of zilla_muf.vjp against its own forward.

For each differentiable function, on one shape, times in interleaved
rounds (``_harness.interleaved_times``): the plain forward call, the
``vjp`` call (forward plus the residuals it keeps), and one call of the
pullback alone. The ratio reported is pullback / forward, taken in the same
run; the goal is about 2x or less. workers=1 throughout, and one BLAS
thread (set before NumPy loads, unless the environment sets it): the dense
discretisations call BLAS on small matrices, and a BLAS thread pool left
awake by an earlier case made their forward a hundred times slower on a
loaded machine.

Every call runs on the calling thread, so by default the time taken is
that thread's processor time (``--clock cpu``: user and system, page
faults included), not wall time (``--clock wall``): on a shared machine a
call descheduled for a time slice (4 ms here) counts that slice in wall
time, and more often the longer the call, which inflated the ratios of
the pullbacks (several times their forward) at random.

Allocation: every timed call allocates its outputs afresh and frees them,
forward and pullback alike, each through the allocator its function uses
(the scans' forward and their row pullbacks through the same one, with
the buffer cache off, as by default); nothing is preallocated for either.

Usage: ``python bench/bench_vjp.py [--repeat 3] [--rounds 2] [--clock cpu]
[--only NAME ...]``; writes ``bench/results/vjp.json``.
"""

import argparse
import os
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Report, interleaved_times, progress  # noqa: E402

import zilla_muf  # noqa: E402


def _c(rng, shape, dtype=np.complex128):
    x = rng.uniform(-1, 1, shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.uniform(-1, 1, shape)
    return x.astype(dtype)


def cases():
    rng = np.random.default_rng(0)
    z = zilla_muf
    out = []

    def add(label, fun, **kw):
        out.append((label, fun, kw))

    for dt in (np.float32, np.float64):
        name = np.dtype(dt).name
        add(f"linear_scan (16, 65536) {name}", z.linear_scan,
            a=rng.uniform(0.5, 1, (16, 65536)).astype(dt),
            b=rng.standard_normal((16, 65536)).astype(dt))
    # the float64 case above straddles the last-level cache (32 MiB here):
    # the forward's 24 MB of a, b and h stay cached between calls, the
    # pullback's 40 MB (a, h, the cotangent, two outputs) do not; at
    # (64, 65536) neither does, and the ratio is that of the traffic
    add("linear_scan (64, 65536) float64", z.linear_scan,
        a=rng.uniform(0.5, 1, (64, 65536)), b=rng.standard_normal((64, 65536)))
    add("linear_scan (16, 16384) complex128", z.linear_scan,
        a=0.9 * _c(rng, (16, 16384)), b=_c(rng, (16, 16384)))
    add("sequential_scan (16, 65536) float64 axis=0 h0", z.sequential_scan,
        a=rng.uniform(0.5, 1, (65536, 16)), b=rng.standard_normal((65536, 16)),
        h0=np.ones(16), axis=0)
    x = rng.standard_normal((1024, 1024)) * 3
    for fun in (z.softmax, z.log_softmax, z.log_sum_exp, z.logcumsumexp):
        add(f"{fun.__name__} (1024, 1024) float64", fun, x=x)
    add("softmax (1024, 1024) float32", z.softmax, x=x.astype(np.float32))
    add("segsum (64, 128) float64", z.segsum, x=rng.standard_normal((64, 128)))
    e = rng.standard_normal(1 << 20) * 4
    for fun in (z.sigmoid, z.silu, z.softplus):
        add(f"{fun.__name__} 2^20 float64", fun, x=e)
    add("semiseparable_matvec (8, 4096, r=16) float64", z.semiseparable_matvec,
        a=rng.uniform(0.5, 1, (8, 4096)), B=rng.standard_normal((8, 4096, 16)),
        C=rng.standard_normal((8, 4096, 16)), x=rng.standard_normal((8, 4096)))
    add("semiseparable_matrix n=256 r=16 float64", z.semiseparable_matrix,
        a=rng.uniform(0.5, 1, 256), B=rng.standard_normal((256, 16)),
        C=rng.standard_normal((256, 16)))
    add("toeplitz_matvec K=64 (16, 8192) float64", z.toeplitz_matvec,
        kernel=rng.standard_normal(64), x=rng.standard_normal((16, 8192)))
    add("toeplitz_matvec K=8192 (16, 8192) float64", z.toeplitz_matvec,
        kernel=rng.standard_normal(8192), x=rng.standard_normal((16, 8192)))
    add("fft_conv K=8192 (16, 8192) float64", z.fft_conv,
        signal=rng.standard_normal((16, 8192)), kernel=rng.standard_normal(8192))
    add("cauchy_matvec L=1024 N=64 conj_pairs", z.cauchy_matvec,
        nodes=np.exp(2j * np.pi * np.arange(1024) / 1024) * 1.5,
        poles=-0.5 + 1j * rng.uniform(-5, 5, (16, 64)), weights=_c(rng, (16, 64)),
        conj_pairs=True)
    add("vandermonde_matvec L=4096 N=64 conj_pairs", z.vandermonde_matvec,
        poles=np.exp(-0.01 + 1j * rng.uniform(-1, 1, (16, 64))),
        weights=_c(rng, (16, 64)), length=4096, conj_pairs=True)
    add("vandermonde_rmatvec L=4096 N=64", z.vandermonde_rmatvec,
        poles=np.exp(-0.01 + 1j * rng.uniform(-1, 1, (16, 64))),
        v=_c(rng, (16, 4096)))
    lam = -rng.uniform(0.1, 1, (64, 4096)) + 1j * rng.uniform(-3, 3, (64, 4096))
    for fun in (z.zoh_discretize, z.bilinear_discretize):
        add(f"{fun.__name__} diagonal (64, 4096) complex128", fun,
            A=lam, B=_c(rng, (64, 4096)), delta=rng.uniform(0.01, 0.1, (64, 1)))
        add(f"{fun.__name__} dense batch 16 N=16 M=4 float64", fun,
            A=rng.standard_normal((16, 16, 16)) - 4 * np.eye(16),
            B=rng.standard_normal((16, 16, 4)), delta=rng.uniform(0.01, 0.1, 16),
            dense=True)
    add("complex_exp 2^20", z.complex_exp, z=_c(rng, 1 << 20))
    add("diag_complex_matrix_exp (256, 4096)", z.diag_complex_matrix_exp,
        eigs=lam[:, :4096][:64], delta=rng.uniform(0.01, 0.1, (64, 1)))
    add("conjugate_pair_output (64, 4096, 16)", z.conjugate_pair_output,
        C=_c(rng, 16), h=_c(rng, (64, 4096, 16)))
    return out


def run(repeat, rounds, only, clock="cpu"):
    report = Report("vjp")
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    for label, fun, kw in cases():
        if only and not any(o in label for o in only):
            continue
        out, pullback = zilla_muf.vjp(fun, **kw)
        outs = out if isinstance(out, tuple) else (out,)
        rng = np.random.default_rng(1)
        cts = tuple(np.where(np.isfinite(y), rng.standard_normal(np.shape(y)), 0)
                    .astype(np.asarray(y).dtype) for y in outs)
        ct = cts if isinstance(out, tuple) else cts[0]
        t = interleaved_times({
            "forward": lambda: fun(**kw),
            "vjp": lambda: zilla_muf.vjp(fun, **kw),
            "pullback": lambda: pullback(ct),
        }, rounds=rounds, repeat=repeat, clock=timer)
        report.add(label, "forward", t["forward"], t["forward"], clock=clock)
        report.add(label, "vjp (forward + residuals)", t["vjp"], t["forward"],
                   clock=clock)
        report.add(label, "pullback", t["pullback"], t["forward"], clock=clock)
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args(argv)
    report = run(args.repeat, args.rounds, args.only, args.clock)
    print(report.table())
    if not args.only:
        progress(f"wrote {report.save()}")


if __name__ == "__main__":
    main()
