"""Benchmark the kernels on strongly against mildly decaying inputs.

    python bench/bench_decays.py [--quick]

A chunked kernel multiplies decays exp(sum of log-decays) into its matrix
products, the selective scan its steps' decays into the state. Where a head
decays fast (a large |A dt| in the SSD and the selective scan, a very
negative gate in linear attention) many decays would lie in the subnormal
range, where the processor's arithmetic runs many times slower; the kernels
set decays below the square root of the smallest normal number to zero, so
that the speed does not depend on how fast the inputs decay.
Each case times the same call on the same shapes with strong decays against
mild ones (the reference), in the same run: a ratio near 1 is what the
flush is for. float32, ``workers=2``.

Cases: the SSD forward (``ssd_chunk_scan_combined``) and its pullback
(``zilla_muf.vjp``), b2 L2048, 8 heads of 64, state 64, chunk 128, A = -1
and steps in [0.01, 0.1] (mild) against A = -8 and steps in [0.5, 3]
(strong); ``linear_attention`` (scalar gate) and ``gated_delta_rule``, B1
T4096 H8 K128 V128, log-gates in [-0.1, 0] against [-8, -3]; the
per-channel gate of ``linear_attention`` (B1 T2048 H4 K64 V64); and Mamba-1's
``selective_scan`` and its pullback, b2 dim 512 state 16 L2048, A = -1 and
steps in [0.001, 0.1] against A = -60 and steps in [1, 3] (every step's
decay below the threshold).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Report, interleaved_times, progress  # noqa: E402

THREADS = 2


def _ssd_inputs(strong, rng):
    b, L, H, P, G, N = 2, 2048, 8, 64, 1, 64
    x = rng.standard_normal((b, L, H, P), dtype=np.float32)
    B = rng.standard_normal((b, L, G, N), dtype=np.float32)
    C = rng.standard_normal((b, L, G, N), dtype=np.float32)
    if strong:
        dt = rng.uniform(0.5, 3.0, (b, L, H)).astype(np.float32)
        A = np.full(H, -8.0, np.float32)
    else:
        dt = rng.uniform(0.01, 0.1, (b, L, H)).astype(np.float32)
        A = np.full(H, -1.0, np.float32)
    return x, dt, A, B, C


def _selective_inputs(strong, rng):
    b, d, n, L = 2, 512, 16, 2048
    u = rng.standard_normal((b, d, L), dtype=np.float32)
    B = rng.standard_normal((b, n, L), dtype=np.float32)
    C = rng.standard_normal((b, n, L), dtype=np.float32)
    A = np.full((d, n), -60.0 if strong else -1.0, np.float32)
    lo, hi = (1.0, 3.0) if strong else (0.001, 0.1)
    delta = rng.uniform(lo, hi, (b, d, L)).astype(np.float32)
    return u, delta, A, B, C


def _la_inputs(strong, rng, shape, per_channel=False):
    B, T, H, K, V = shape
    q = rng.standard_normal((B, T, H, K), dtype=np.float32)
    k = rng.standard_normal((B, T, H, K), dtype=np.float32)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, T, H, V), dtype=np.float32)
    lo, hi = (-8.0, -3.0) if strong else (-0.1, 0.0)
    g = rng.uniform(lo, hi, (B, T, H, K) if per_channel else (B, T, H)).astype(np.float32)
    beta = rng.uniform(0.1, 0.9, (B, T, H)).astype(np.float32)
    return q, k, v, g, beta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    rounds, repeat = (2, 3) if args.quick else (3, 5)
    from zilla_muf import (gated_delta_rule, linear_attention, selective_scan,
                           ssd_chunk_scan_combined, vjp)

    report = Report("decays")
    rng = np.random.default_rng(0)
    w = THREADS
    cases = {}

    def ssd_case(strong):
        a = _ssd_inputs(strong, rng)
        return lambda: ssd_chunk_scan_combined(*a, 128, workers=w)

    def ssd_grad_case(strong):
        a = _ssd_inputs(strong, rng)
        y, pullback = vjp(ssd_chunk_scan_combined, *a, 128, workers=w)
        gy = np.ones_like(y)
        return lambda: pullback(gy)

    shape = (1, 4096, 8, 128, 128)

    def la_case(strong):
        q, k, v, g, _ = _la_inputs(strong, rng, shape)
        return lambda: linear_attention(q, k, v, g, workers=w)

    def gdr_case(strong):
        q, k, v, g, beta = _la_inputs(strong, rng, shape)
        return lambda: gated_delta_rule(q, k, v, g, beta, workers=w)

    def la_channel_case(strong):
        q, k, v, g, _ = _la_inputs(strong, rng, (1, 2048, 4, 64, 64), per_channel=True)
        return lambda: linear_attention(q, k, v, g, workers=w)

    def selective_case(strong):
        a = _selective_inputs(strong, rng)
        return lambda: selective_scan(*a, workers=w)

    def selective_grad_case(strong):
        a = _selective_inputs(strong, rng)
        y, pullback = vjp(selective_scan, *a, workers=w)
        gy = np.ones_like(y)
        return lambda: pullback(gy)

    cases = {
        "ssd_chunk_scan_combined b2 L2048 h8x64 n64": ssd_case,
        "ssd_chunk_scan_combined pullback b2 L2048 h8x64 n64": ssd_grad_case,
        "linear_attention scalar gate B1 T4096 H8 K128 V128": la_case,
        "gated_delta_rule B1 T4096 H8 K128 V128": gdr_case,
        "linear_attention per-channel gate B1 T2048 H4 K64 V64": la_channel_case,
        "selective_scan b2 dim512 n16 L2048": selective_case,
        "selective_scan pullback b2 dim512 n16 L2048": selective_grad_case,
    }
    for case, make in cases.items():
        progress(case)
        fns = {"mild decays": make(False), "strong decays": make(True)}
        times = interleaved_times(fns, rounds=rounds, repeat=repeat)
        ref = report.add(case, "mild decays", times["mild decays"])["seconds"]
        report.add(case, "strong decays", times["strong decays"], ref)
    print(report.table())
    report.save()


if __name__ == "__main__":
    main()
