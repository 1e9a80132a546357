"""Benchmark zilla_muf.linear_attention against the PyTorch CPU listings.

    python bench/bench_linear_attention.py [--quick] [--shape B T H K V]

Case B2 T4096 H8 K128 V128 float32 (the issue's), 2 threads on both sides
(``torch.set_num_threads(2)``, ``workers=2``), and ``workers=1`` too:

- ``linear_attention`` with a scalar gate against FLA's
  ``naive_chunk_simple_gla``;
- ``gated_delta_rule`` against FLA's ``naive_chunk_gated_delta_rule`` and
  transformers' ``torch_chunk_gated_delta_rule`` (Qwen3-Next's CPU path).

FLA's listings are fetched from its source release at run time
(bench/fla_reference.py). Every function is timed in interleaved rounds;
the ratios are taken in the same run. GFLOP/s count the chunked algorithm's
matrix products (chunk 32, the default) and are compared with NumPy's sgemm
measured in the same run (64x64 on one thread, 2048x2048 on two); the
kernels' build (AVX-512, AVX2 or baseline) is printed.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Report, interleaved_times, progress  # noqa: E402

THREADS = 2


# the positions per chunk of the compiled kernels (the functions' default)
CHUNK = 32


def la_flops(B, T, H, K, V, C=CHUNK):
    """q k^T and A v (C x C per chunk, counted whole), k^T v and q S."""
    return 2.0 * B * H * T * (C * K + C * V + 2 * K * V)


def gdr_flops(B, T, H, K, V, C=CHUNK):
    """la_flops plus k k^T, k S and the triangular (I + M)^{-1} R."""
    return la_flops(B, T, H, K, V, C) + 2.0 * B * H * T * (C * K + C * V / 2 + K * V)


def sgemm_throughput():
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    out = {}
    a = rng.standard_normal((64, 64), dtype=np.float32)
    with threadpool_limits(1, user_api="blas"):
        t = interleaved_times({"a": lambda: a @ a}, rounds=3, repeat=7, min_time=0.05)["a"]
    out["sgemm64_1thread"] = 2 * 64**3 / t / 1e9
    a = rng.standard_normal((2048, 2048), dtype=np.float32)
    with threadpool_limits(THREADS, user_api="blas"):
        t = interleaved_times({"a": lambda: a @ a}, rounds=2, repeat=3)["a"]
    out[f"sgemm2048_{THREADS}threads"] = 2 * 2048**3 / t / 1e9
    return out


def make_inputs(B, T, H, K, V, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, H, K), dtype=np.float32).astype(dtype)
    k = rng.standard_normal((B, T, H, K), dtype=np.float32)
    k = (k / np.linalg.norm(k, axis=-1, keepdims=True)).astype(dtype)
    v = rng.standard_normal((B, T, H, V), dtype=np.float32).astype(dtype)
    g = -rng.uniform(0.0, 0.1, (B, T, H)).astype(dtype)
    beta = rng.uniform(0.1, 0.9, (B, T, H)).astype(dtype)
    return q, k, v, g, beta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--shape", nargs=5, type=int, default=[2, 4096, 8, 128, 128],
                        metavar=("B", "T", "H", "K", "V"))
    args = parser.parse_args(argv)
    rounds, repeat = (2, 1) if args.quick else (3, 3)
    from zilla_muf import gated_delta_rule, linear_attention

    B, T, H, K, V = args.shape
    case = f"B{B} T{T} H{H} K{K} V{V} float32"
    q, k, v, g, beta = make_inputs(B, T, H, K, V)
    report = Report("linear_attention")

    la = {f"linear_attention workers={w}": (lambda w=w: linear_attention(q, k, v, g, workers=w))
          for w in (THREADS, 1)}
    gdr = {f"gated_delta_rule workers={w}":
           (lambda w=w: gated_delta_rule(q, k, v, g, beta, workers=w)) for w in (THREADS, 1)}
    la_ref = gdr_ref = None
    skipped = []
    try:
        import torch

        torch.set_num_threads(THREADS)
        import fla_reference

        sg = fla_reference.load("simple_gla").naive_chunk_simple_gla
        gd = fla_reference.load("gated_delta_rule").naive_chunk_gated_delta_rule
        tq, tk, tv, tg, tb = (torch.from_numpy(x) for x in (q, k, v, g, beta))

        def fla_sgla():
            with torch.inference_mode():
                return sg(tq, tk, tv, tg)

        def fla_gdr():
            with torch.inference_mode():
                return gd(tq, tk, tv, tg, tb)

        la["FLA naive_chunk_simple_gla (torch)"] = fla_sgla
        gdr["FLA naive_chunk_gated_delta_rule (torch)"] = fla_gdr
        la_ref, gdr_ref = "FLA naive_chunk_simple_gla (torch)", "FLA naive_chunk_gated_delta_rule (torch)"
        try:
            import logging

            logging.getLogger("transformers").setLevel(logging.ERROR)
            from transformers.models.qwen3_next.modeling_qwen3_next import (
                torch_chunk_gated_delta_rule,
            )

            def hf_gdr():
                with torch.inference_mode():
                    return torch_chunk_gated_delta_rule(tq, tk, tv, tg, tb)

            gdr["transformers torch_chunk_gated_delta_rule"] = hf_gdr
        except ImportError as exc:
            skipped.append(f"transformers: {exc}")
    except Exception as exc:  # no torch, no einops, offline
        skipped.append(f"PyTorch baselines: {exc}")
    for name in skipped:
        progress(f"skipped {name}")

    from zilla_muf import _linear_attention

    gemm = sgemm_throughput()
    progress(f"sgemm: {gemm}; chunk kernels' build: {_linear_attention.kernel_build()}")
    for fns, ref, flops, label in ((la, la_ref, la_flops(B, T, H, K, V), "linear_attention, scalar g"),
                                   (gdr, gdr_ref, gdr_flops(B, T, H, K, V), "gated_delta_rule")):
        times = interleaved_times(fns, rounds=rounds, repeat=repeat)
        ref_t = times[ref] if ref else None
        for name, t in times.items():
            extra = {}
            if name.startswith(("linear_attention", "gated_delta_rule")):
                extra["gflops"] = flops / t / 1e9
                extra.update(gemm)
                for base, bt in times.items():
                    if not base.startswith(("linear_attention", "gated_delta_rule")):
                        extra[f"speedup vs {base}"] = bt / t
            report.add(f"{label}: {case}", name, t, ref_t, **extra)
    print(report.table())
    for r in report.rows:
        extras = {k2: round(v2, 2) for k2, v2 in r.items()
                  if k2.startswith(("speedup", "gflops", "sgemm"))}
        if extras:
            print(r["name"], extras)
    report.save()


if __name__ == "__main__":
    main()
