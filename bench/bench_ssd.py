"""Benchmark of zilla_muf.ssd against mamba_ssm's PyTorch reference.

For each case (float32, both sides on 2 threads):

* time ``ssd_chunk_scan_combined`` (default and other chunk sizes) and
  mamba_ssm's own ``ssd_minimal_discrete`` listing (loaded from its source
  release by bench/mamba_reference.py) at chunk sizes 64, 128 and 256, and
  report the ratio to torch's best;
* the GFLOP/s of the chunked path (the multiply-adds of its matrix
  products, counted below) as a fraction of the float32 matmul throughput
  measured in the same run (NumPy ``a @ b`` at 64x64 on one thread, times
  the threads used, and at 2048x2048 on 2 threads);
* peak extra memory of one call, as the growth of VmHWM (peak resident set,
  which sees C and torch allocations) in a fresh subprocess per
  (case, implementation), after the inputs exist and the libraries are warm;
* a seqlen sweep of ``ssd_sequential`` against the chunked path (crossover).

The machine may be shared: every time is the lowest of a few medians, and
the matmul reference is measured in the same run so that fractions of it
mean something even when absolute numbers drift.

Run ``python bench/bench_ssd.py`` (``--quick`` for a short run); results go
to ``bench/results/ssd.json`` and a plot ``bench/results/ssd_crossover.png``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import RESULTS, Report, median_time, progress  # noqa: E402


def best_time(fn, rounds=3, **kw):
    """The lowest of a few medians: on a shared machine, the least disturbed."""
    return min(median_time(fn, **kw) for _ in range(rounds))

THREADS = 2
CASES = {
    # name: (batch, seqlen, nheads, headdim, ngroups, dstate)
    "b1_L4096_h8_p64_n64": (1, 4096, 8, 64, 1, 64),
    "b4_L2048_h24_p64_n128": (4, 2048, 24, 64, 1, 128),
}
TORCH_CHUNKS = (64, 128, 256)
OUR_CHUNKS = (None, 32, 128)


def make_inputs(shape, dtype=np.float32, seed=0):
    """Realistic Mamba-2 inputs: softplus(dt) in about [0.001, 0.1], A in [-16, -1]."""
    b, L, H, P, G, N = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, L, H, P), dtype=np.float32).astype(dtype)
    dt = rng.uniform(-7.0, -2.3, (b, L, H)).astype(dtype)
    A = (-rng.uniform(1.0, 16.0, H)).astype(dtype)
    B = rng.standard_normal((b, L, G, N), dtype=np.float32).astype(dtype)
    C = rng.standard_normal((b, L, G, N), dtype=np.float32).astype(dtype)
    return x, dt, A, B, C


def chunked_flops(shape, chunk_size):
    """Floating-point operations of the chunked path's matrix products.

    Per chunk and head: (E o C B^T) X  (chunk x chunk x headdim, the full
    square although half of it is masked), C S^T and B^T (w X) (each
    chunk x headdim x dstate); C B^T once per chunk and group.
    """
    b, L, H, P, G, N = shape
    cs = min(chunk_size, L)
    return 2.0 * b * L * (H * (cs * P + 2 * P * N) + G * cs * N)


def cpu_time(fn, repeat=5, min_time=0.05):
    """Lowest CPU time per call of the process (single-threaded calls only):
    time the kernel actually ran, whatever else shares the machine."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        calls = 0
        t0 = time.process_time()
        while True:
            fn()
            calls += 1
            dt = time.process_time() - t0
            if dt >= min_time:
                break
        best = min(best, dt / calls)
    return best


def matmul_throughput():
    """float32 GFLOP/s of NumPy matmul: 64x64 on one thread, 2048^2 on THREADS."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    out = {}
    a = rng.standard_normal((64, 64), dtype=np.float32)
    with threadpool_limits(1, user_api="blas"):
        t = best_time(lambda: a @ a, repeat=7, min_time=0.05)
    out["gemm64_1thread"] = 2 * 64**3 / t / 1e9
    with threadpool_limits(1, user_api="blas"):
        t = cpu_time(lambda: a @ a)
    out["gemm64_1thread_cputime"] = 2 * 64**3 / t / 1e9
    a = rng.standard_normal((2048, 2048), dtype=np.float32)
    with threadpool_limits(THREADS, user_api="blas"):
        t = best_time(lambda: a @ a, repeat=5)
    out["gemm2048_%dthreads" % THREADS] = 2 * 2048**3 / t / 1e9
    return out


# ---------------------------------------------------------------------------
# Implementations, by name
# ---------------------------------------------------------------------------


def run_ours(inputs, chunk_size, workers=THREADS):
    from zilla_muf import ssd_chunk_scan_combined

    x, dt, A, B, C = inputs
    return ssd_chunk_scan_combined(x, dt, A, B, C, chunk_size, dt_softplus=True,
                                   return_final_states=True, workers=workers)


def run_sequential(inputs, workers=THREADS):
    from zilla_muf import ssd_sequential

    x, dt, A, B, C = inputs
    return ssd_sequential(x, dt, A, B, C, dt_softplus=True,
                          return_final_states=True, workers=workers)


def torch_runner(inputs, chunk_size):
    import torch

    from mamba_reference import ssd_layer, ssd_minimal_discrete

    listing = ssd_minimal_discrete()
    torch.set_num_threads(THREADS)
    tin = [torch.from_numpy(np.ascontiguousarray(v)) for v in inputs]

    def run():
        with torch.inference_mode():
            return ssd_layer(*tin, chunk_size, dt_softplus=True, listing=listing)

    return run


# ---------------------------------------------------------------------------
# Peak memory, one subprocess per measurement
# ---------------------------------------------------------------------------


def _status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak():
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(case, impl, chunk):
    """In a fresh process: warm up on a small problem, build the inputs,
    reset the peak RSS, and report its growth over one call (the output
    array included: every method returns one of the same size)."""
    shape = CASES[case]
    small = make_inputs((1, 256, 2, 16, 1, 16))
    if impl == "torch":
        torch_runner(small, 64)()
        inputs = make_inputs(shape)
        run = torch_runner(inputs, chunk)
    elif impl == "ours":
        run_ours(small, None)
        inputs = make_inputs(shape)

        def run():
            return run_ours(inputs, chunk)
    else:
        run_sequential(small)
        inputs = make_inputs(shape)

        def run():
            return run_sequential(inputs)
    out_bytes = inputs[0].nbytes
    reset = _reset_peak()
    before = _status_kib("VmRSS") if reset else _status_kib("VmHWM")
    result = run()
    after = _status_kib("VmHWM")
    del result
    print(json.dumps({"extra_kib": after - before, "output_kib": out_bytes // 1024,
                      "peak_reset": reset}))


def measure_memory(case, impl, chunk):
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child", case, impl, str(chunk)],
        capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--memory-child", nargs=3, metavar=("CASE", "IMPL", "CHUNK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        case, impl, chunk = args.memory_child
        memory_child(case, impl, None if chunk == "None" else int(chunk))
        return
    repeat = 3 if args.quick else 5

    report = Report("ssd")
    peak = matmul_throughput()
    progress(f"matmul throughput (GFLOP/s): {peak}")
    summary = {"matmul_gflops": peak, "cases": {}}

    for case, shape in CASES.items():
        inputs = make_inputs(shape)
        # torch reference at each chunk size; its best is the reference time
        t_torch = {}
        for cs in TORCH_CHUNKS:
            t_torch[cs] = best_time(torch_runner(inputs, cs), rounds=2, repeat=repeat)
            report.add(case, f"torch ssd_minimal_discrete chunk={cs}", t_torch[cs])
        best_cs = min(t_torch, key=t_torch.get)
        ref = t_torch[best_cs]
        res = {"torch_best_chunk": best_cs, "torch_seconds": ref}
        for cs in OUR_CHUNKS:
            t = best_time(lambda cs=cs: run_ours(inputs, cs), repeat=repeat)
            eff_cs = 64 if cs is None else cs
            gflops = chunked_flops(shape, eff_cs) / t / 1e9
            row = report.add(case, f"ssd_chunk_scan_combined chunk={cs}", t, ref,
                             gflops=gflops,
                             frac_gemm64=gflops / (THREADS * peak["gemm64_1thread"]),
                             frac_gemm2048=gflops / peak[f"gemm2048_{THREADS}threads"])
            res[f"ours_chunk_{cs}"] = row
        t1 = best_time(lambda: run_ours(inputs, None, workers=1), repeat=repeat)
        report.add(case, "ssd_chunk_scan_combined workers=1", t1, ref)
        # per-core efficiency from CPU time (robust when the machine is shared)
        c1 = cpu_time(lambda: run_ours(inputs, None, workers=1), repeat=repeat)
        g1 = chunked_flops(shape, 64) / c1 / 1e9
        res["cputime_1thread"] = {"seconds": c1, "gflops": g1,
                                  "frac_gemm64": g1 / peak["gemm64_1thread_cputime"]}
        progress(f"{case}: one thread by CPU time {c1 * 1e3:.1f} ms, {g1:.1f} GFLOP/s "
                 f"= {g1 / peak['gemm64_1thread_cputime']:.2f} of 64x64 sgemm")
        x64 = [v.astype(np.float64) for v in inputs]
        t64 = best_time(lambda: run_ours(x64, None), repeat=repeat)
        report.add(case, "ssd_chunk_scan_combined float64", t64, ref)
        ts = median_time(lambda: run_sequential(inputs), repeat=max(1, repeat - 2))
        report.add(case, "ssd_sequential", ts, ref)
        # memory
        mem_t = measure_memory(case, "torch", best_cs)
        mem_o = measure_memory(case, "ours", "None")
        mem_s = measure_memory(case, "sequential", "None")
        res["memory_kib"] = {"torch": mem_t, "ours": mem_o, "sequential": mem_s}
        progress(f"{case}: peak extra memory (KiB) torch chunk={best_cs}: "
                 f"{mem_t['extra_kib']}, ours: {mem_o['extra_kib']}, "
                 f"sequential: {mem_s['extra_kib']} (output itself "
                 f"{mem_o['output_kib']})")
        summary["cases"][case] = res

    # crossover: sequential vs chunked over seqlen, case-1 head shape
    sweep = []
    for L in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048):
        inputs = make_inputs((1, L, 8, 64, 1, 64))
        tc = best_time(lambda: run_ours(inputs, None), repeat=repeat, min_time=0.02)
        ts = best_time(lambda: run_sequential(inputs), repeat=repeat, min_time=0.02)
        sweep.append({"seqlen": L, "chunked": tc, "sequential": ts})
        report.add(f"sweep b1_h8_p64_n64 L={L}", "ssd_sequential", ts, tc)
    slower = [s["seqlen"] for s in sweep if s["sequential"] > s["chunked"]]
    summary["crossover_seqlen"] = min(slower) if slower else None
    summary["sweep"] = sweep
    progress(f"ssd_sequential is slower than the chunked path from seqlen "
             f"{summary['crossover_seqlen']} on (batch 1, 8 heads, 64x64 state)")

    print(report.table())
    print(json.dumps({k: v for k, v in summary.items() if k != "sweep"}, indent=1,
                     default=float))
    path = report.save()
    (RESULTS / "ssd_summary.json").write_text(json.dumps(summary, indent=1,
                                                         default=float))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        Ls = [s["seqlen"] for s in sweep]
        ax.loglog(Ls, [s["chunked"] * 1e3 for s in sweep], "o-",
                  label="ssd_chunk_scan_combined")
        ax.loglog(Ls, [s["sequential"] * 1e3 for s in sweep], "s-",
                  label="ssd_sequential")
        ax.set_xlabel("seqlen")
        ax.set_ylabel("ms (batch 1, 8 heads, 64x64, 2 threads)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "ssd_crossover.png", dpi=100)
    except ImportError:
        pass
    progress(f"wrote {path}")


if __name__ == "__main__":
    main()
