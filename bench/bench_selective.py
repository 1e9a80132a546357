"""Benchmarks of zilla_muf.selective and the Mamba layers in examples/.

Cases
-----
* ``selective_scan`` at Mamba-1 130M/370M-like sizes (batch 2, dim 1536,
  dstate 16, seqlen 2048, B and C of shape (batch, dstate, seqlen), D, z,
  delta_bias, softplus), float32 and float64, workers 1 and 2, against
  mamba_ssm's own ``selective_scan_ref`` listing (loaded from its source
  release by ``mamba_reference.py``, ``torch.set_num_threads(2)``; it
  computes in float32 whatever the input dtype, so in the float64 case it
  is given A in float32, as its einsums require) and the memory roofline
  ``np.add(u, delta, out=y)`` (the bytes of u, delta and y; the scan also
  reads z).
* ``causal_conv1d`` (width 4) against ``torch.nn.functional.conv1d``.
* The Mamba-2 mixer of ``examples/mamba2_layer.py`` (d_model 768, seqlen
  2048, batch 1): prefill time and decode tokens/s against transformers'
  ``Mamba2Mixer`` torch path, when the example and zilla_muf.ssd exist.

Ratios are zilla_muf time / baseline time (below 1 is faster). Run
``python bench/bench_selective.py [--quick]``; results go to
``bench/results/selective.json``.
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Report, median_time, progress  # noqa: E402

import zilla_muf  # noqa: E402
from zilla_muf import causal_conv1d, selective_scan  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    return torch


def _load_example(name):
    path = ROOT / "examples" / f"{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def scan_inputs(rng, dtype, batch, dim, dstate, seqlen):
    u = rng.standard_normal((batch, dim, seqlen)).astype(dtype)
    delta = rng.uniform(-4, -1, (batch, dim, seqlen)).astype(dtype)
    A = -np.tile(np.arange(1, dstate + 1, dtype=dtype), (dim, 1))
    B = rng.standard_normal((batch, dstate, seqlen)).astype(dtype)
    C = rng.standard_normal((batch, dstate, seqlen)).astype(dtype)
    D = np.ones(dim, dtype)
    z = rng.standard_normal((batch, dim, seqlen)).astype(dtype)
    bias = rng.uniform(-1, 0, dim).astype(dtype)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias)


def bench_scan(report, quick):
    torch = _torch()
    rng = np.random.default_rng(0)
    batch, dim, dstate, seqlen = (2, 1536, 16, 2048) if not quick else (2, 384, 16, 512)
    repeat = 3 if quick else 5
    for dtype in (np.float32, np.float64):
        args = scan_inputs(rng, dtype, batch, dim, dstate, seqlen)
        case = f"selective_scan {np.dtype(dtype).name} b{batch} d{dim} n{dstate} L{seqlen}"
        ref_t = None
        if torch is not None:
            from mamba_reference import selective_scan_ref

            listing = selective_scan_ref()
            targs = {k: torch.from_numpy(v) for k, v in args.items()}
            targs["A"] = targs["A"].float()

            def run_ref():
                with torch.no_grad():
                    return listing(**targs, delta_softplus=True)

            ref_t = median_time(run_ref, repeat=max(2, repeat - 2), warmup=1)
            report.add(case, "torch selective_scan_ref (2 threads, in float32)", ref_t)
            y_ref = run_ref().numpy()
        y = np.empty_like(args["u"])
        roof = median_time(lambda: np.add(args["u"], args["delta"], out=y),
                           repeat=repeat)
        report.add(case, "roofline np.add(u, delta, out=y)", roof)
        for workers in (1, 2):
            def run(workers=workers):
                return selective_scan(**args, delta_softplus=True, workers=workers)

            t = median_time(run, repeat=repeat)
            report.add(case, f"zilla_muf workers={workers}", t, ref_t,
                       vs_roofline=t / roof)
        if torch is not None:
            err = float(np.max(np.abs(run() - y_ref)) / np.max(np.abs(y_ref)))
            progress(f"  max relative difference to the torch reference: {err:.2e}")
    bench_scan_complex(report, rng, batch, dim, dstate, seqlen, repeat)


def bench_scan_complex(report, rng, batch, dim, dstate, seqlen, repeat):
    """Complex A (S4D-Lin: -1/2 + i pi n) with complex B and C, against the
    same scan with real A: a complex state costs four real multiplies per
    product, and each step's decays need exp, sin and cos."""
    args = scan_inputs(rng, np.float32, batch, dim, dstate, seqlen)
    case = (f"selective_scan complex64 (S4D-Lin A) b{batch} d{dim} n{dstate} "
            f"L{seqlen}")
    t_real = median_time(lambda: selective_scan(**args, delta_softplus=True,
                                                workers=2), repeat=repeat)
    report.add(case, "zilla_muf float32, real A, workers=2", t_real)
    cargs = dict(args)
    cargs["A"] = (-0.5 + 1j * np.pi * np.arange(dstate)).astype(np.complex64) \
        * np.ones((dim, 1), np.complex64)
    for key in ("B", "C"):
        x = rng.standard_normal((2,) + args[key].shape)
        cargs[key] = (x[0] + 1j * x[1]).astype(np.complex64)
    for workers in (1, 2):
        def run(workers=workers):
            return selective_scan(**cargs, delta_softplus=True, workers=workers)

        report.add(case, f"zilla_muf complex64 workers={workers}",
                   median_time(run, repeat=repeat), t_real)


def bench_conv(report, quick):
    torch = _torch()
    rng = np.random.default_rng(1)
    batch, dim, seqlen, width = (2, 1536, 2048, 4) if not quick else (2, 384, 512, 4)
    x = rng.standard_normal((batch, dim, seqlen)).astype(np.float32)
    w = rng.standard_normal((dim, width)).astype(np.float32)
    b = rng.standard_normal(dim).astype(np.float32)
    case = f"causal_conv1d float32 b{batch} d{dim} L{seqlen} w{width}"
    ref_t = None
    if torch is not None:
        import torch.nn.functional as F

        tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w)[:, None], torch.from_numpy(b)

        def run_ref():
            with torch.no_grad():
                return F.silu(F.conv1d(tx, tw, tb, padding=width - 1,
                                       groups=dim)[..., :seqlen])

        ref_t = median_time(run_ref, repeat=5)
        report.add(case, "torch conv1d + silu (2 threads)", ref_t)
    for workers in (1, 2):
        t = median_time(lambda: causal_conv1d(x, w, b, activation="silu",
                                              workers=workers), repeat=5)
        report.add(case, f"zilla_muf workers={workers}", t, ref_t)


def bench_mamba2(report, quick):
    m2 = _load_example("mamba2_layer")
    torch = _torch()
    if m2 is None or not hasattr(zilla_muf, "ssd"):
        progress("examples/mamba2_layer.py or zilla_muf.ssd missing: Mamba-2 skipped")
        return
    d_model, seqlen, n_decode = (768, 2048, 64) if not quick else (256, 256, 16)
    case = f"Mamba-2 mixer d_model {d_model} batch 1"
    rng = np.random.default_rng(2)
    hidden = rng.standard_normal((1, seqlen, d_model)).astype(np.float32)
    mixer = None
    if torch is not None:
        try:
            from transformers import Mamba2Config
            from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
        except ImportError:
            Mamba2Config = None
        if Mamba2Config is not None:
            config = Mamba2Config(hidden_size=d_model, state_size=128, expand=2,
                                  head_dim=64, num_heads=2 * d_model // 64,
                                  n_groups=1, conv_kernel=4, chunk_size=256,
                                  num_hidden_layers=1, vocab_size=16)
            mixer = Mamba2Mixer(config, layer_idx=0).eval()
            w = m2.Mamba2Weights.from_state_dict(
                {k: v.detach().numpy() for k, v in mixer.state_dict().items()},
                n_groups=1, head_dim=64, eps=config.layer_norm_epsilon)
    if mixer is None:
        w = m2.Mamba2Weights.random(d_model=d_model, d_state=128, head_dim=64)

    t = median_time(lambda: m2.forward(w, hidden, workers=2), repeat=3)
    ref_t = None
    if mixer is not None:
        th = torch.from_numpy(hidden)

        def run_ref():
            with torch.no_grad():
                return mixer(th)

        ref_t = median_time(run_ref, repeat=3)
        report.add(f"{case} prefill L{seqlen}", "transformers Mamba2Mixer (torch, 2 threads)", ref_t)
    report.add(f"{case} prefill L{seqlen}", "zilla_muf example, workers=2", t, ref_t)
    t_env = _prefill_with_quiet_blas(d_model, seqlen)
    if t_env is not None:
        report.add(f"{case} prefill L{seqlen}",
                   "zilla_muf example, workers=2, OPENBLAS_THREAD_TIMEOUT=4", t_env, ref_t)

    # decode: tokens per second after a short prefill
    _, conv_state, ssm_state = m2.forward(w, hidden[:, :16], workers=2)
    toks = hidden[:, 16:16 + n_decode]

    def decode():
        cs, ss = conv_state.copy(), ssm_state.copy()
        for i in range(n_decode):
            m2.step(w, toks[:, i], cs, ss)

    t = median_time(decode, repeat=3) / n_decode
    ref_t = None
    if mixer is not None:
        ref_t = _mamba2_torch_decode_time(torch, mixer, config, hidden, n_decode)
        if ref_t is not None:
            report.add(f"{case} decode", "transformers Mamba2Mixer step (torch)", ref_t,
                       tokens_per_s=1 / ref_t)
    report.add(f"{case} decode", "zilla_muf example step", t, ref_t,
               tokens_per_s=1 / t)


_PREFILL_CHILD = """
import sys, numpy as np
sys.path.insert(0, {bench!r})
from _harness import median_time
from bench_selective import _load_example
m2 = _load_example("mamba2_layer")
w = m2.Mamba2Weights.random(d_model={d_model}, d_state=128, head_dim=64)
hidden = np.random.default_rng(2).standard_normal((1, {seqlen}, {d_model})).astype(np.float32)
print(median_time(lambda: m2.forward(w, hidden, workers=2), repeat=3))
"""


def _prefill_with_quiet_blas(d_model, seqlen):
    """Seconds of the example's prefill in a process whose OpenBLAS threads
    sleep as soon as a call returns (OPENBLAS_THREAD_TIMEOUT=4, read when
    NumPy loads): its spinning threads then leave the cores to zilla_muf's
    OpenMP threads between the layer's matrix products."""
    import os
    import subprocess

    env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT="4")
    code = _PREFILL_CHILD.format(bench=str(Path(__file__).resolve().parent),
                                 d_model=d_model, seqlen=seqlen)
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        progress(f"prefill with OPENBLAS_THREAD_TIMEOUT=4 failed: {proc.stderr[-300:]}")
        return None
    return float(proc.stdout.split()[-1])


def _mamba2_torch_decode_time(torch, mixer, config, hidden, n_decode):
    """Seconds per token of Mamba2Mixer's cached single-token path."""
    try:
        from transformers import DynamicCache
    except ImportError:
        return None
    try:
        cache = DynamicCache(config=config)
        th = torch.from_numpy(hidden)
        with torch.no_grad():
            mixer(th[:, :16], cache_params=cache)

            def decode():
                for i in range(n_decode):
                    mixer(th[:, 16 + i:17 + i], cache_params=cache)

            return median_time(decode, repeat=3, warmup=0) / n_decode
    except Exception as exc:  # the cache API moves between releases
        progress(f"torch decode baseline unavailable: {exc!r}")
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, fewer repeats")
    ap.add_argument("--only", choices=["scan", "conv", "mamba2"], default=None)
    opts = ap.parse_args()
    report = Report("selective")
    if opts.only in (None, "scan"):
        bench_scan(report, opts.quick)
    if opts.only in (None, "conv"):
        bench_conv(report, opts.quick)
    if opts.only in (None, "mamba2"):
        bench_mamba2(report, opts.quick)
    print(report.table())
    if not opts.quick:
        print("saved", report.save())


if __name__ == "__main__":
    main()
