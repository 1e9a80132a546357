"""Benchmark: forward + backward of the layers against our forward and torch.

    python bench/bench_layer_grads.py [--quick] [--repeat N] [--ssd-only]
                                      [--ssd-workers 1,2]

Cases (float32, 2 threads on each side):

- SSD b1 L4096 h8 p64 n64 and b4 L2048 h24 p64 n128 (ngroups 1, softplus
  dt, D, z): ``ssd_chunk_scan_combined`` forward alone; forward + backward
  through ``zilla_muf._vjp.vjp`` (the output's cotangent made once,
  outside the timed calls); both also with each worker count of
  ``--ssd-workers`` (rows "... w1", with the ratio of CPU times besides
  that of wall times); torch autograd through mamba_ssm's
  ``ssd_chunk_scan_combined_ref`` (the chunked reference of its Triton
  SSD, with D and the gate) and through its ``ssd_minimal_discrete`` (the
  Mamba-2 paper's listing; D and the gate added here), both loaded from
  its source release by ``bench/mamba_reference.py``, each at its best
  chunk size among 64, 128, 256 (64 and 256 with ``--quick``).
- selective scan b2 d1536 n16 L2048 (real A, B and C (batch, dstate,
  seqlen), D, z, delta_bias, softplus): forward alone; forward + backward
  (2 threads, and again on 1 thread each); torch autograd through a loop
  written here with the computation of mamba_ssm's ``selective_scan_ref``,
  each step's slice taken once by unbind (autograd through the listing
  itself, which indexes ``[:, :, i]`` at every step, builds a full-size
  gradient per step: quadratic in the sequence length). Before it is
  timed, its forward is checked against the listing loaded from
  mamba_ssm's release on a slice of the inputs.

Every ratio compares times measured in the same run: ours interleaved with
our forward; each torch baseline (seconds per run) against the mean of our
forward + backward timed just before and just after it.
GFLOP/s of the SSD forward + backward are given as a fraction of this
machine's sgemm throughput (a 2048 x 2048 float32 matmul by NumPy), with
two operation counts: three forwards by the forward docstring's count of
multiply-adds (which counts C B^T per head and the masked triangle in
full), and the operations the kernels execute (``ssd_fwd_bwd_flops``).
Peak memory: the forward + backward of each side in a fresh process
(``ru_maxrss`` growth).
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import Report, interleaved_times, median_time, progress  # noqa: E402

THREADS = 2

SSD_SHAPES = {
    "b1 L4096 h8 p64 n64": (1, 4096, 8, 64, 1, 64),
    "b4 L2048 h24 p64 n128": (4, 2048, 24, 64, 1, 128),
}
SEL_SHAPE = (2, 1536, 16, 2048)


def ssd_inputs(shape, seed=0):
    nb, L, H, P, G, N = shape
    rng = np.random.default_rng(seed)
    f = np.float32
    return dict(
        x=rng.standard_normal((nb, L, H, P)).astype(f),
        dt=np.log(np.expm1(rng.uniform(0.001, 0.1, (nb, L, H)))).astype(f),
        A=-rng.uniform(1.0, 16.0, H).astype(f),
        B=rng.standard_normal((nb, L, G, N)).astype(f),
        C=rng.standard_normal((nb, L, G, N)).astype(f),
        D=rng.standard_normal(H).astype(f),
        z=rng.standard_normal((nb, L, H, P)).astype(f),
    )


def ssd_flops(shape, cs):
    """Multiply-adds x 2 of the SSD forward (chunked algorithm), per the
    forward's docstring: 2Q(N + P) + 4PN per token and head."""
    nb, L, H, P, G, N = shape
    return 2.0 * nb * L * H * (2 * cs * (N + P) + 4 * P * N)


def ssd_fwd_bwd_flops(shape, cs):
    """Floating-point operations (2 per multiply-add) that the forward with
    chunk states and the backward execute in their matrix products, the
    triangular ones counted as triangles: per chunk of one head, forward
    Q(Q+1)/2 P + 2QNP, backward 4QNP + Q(Q+1) P; per chunk of a group, C B^T
    once in the forward and once, with its two gradient products, in the
    backward: 4 Q(Q+1)/2 N."""
    nb, L, H, P, G, N = shape
    nc = -(-L // cs)
    tri = cs * (cs + 1) / 2
    head = tri * P + 2 * cs * N * P + 4 * cs * N * P + 2 * tri * P
    group = 4 * tri * N
    return 2.0 * nb * nc * (H * head + G * group)


def sel_inputs(seed=0):
    b, d, n, L = SEL_SHAPE
    rng = np.random.default_rng(seed)
    f = np.float32
    return dict(
        u=rng.standard_normal((b, d, L)).astype(f),
        delta=rng.uniform(-4.0, -1.0, (b, d, L)).astype(f),
        A=-rng.uniform(0.5, 16.0, (d, n)).astype(f),
        B=rng.standard_normal((b, n, L)).astype(f),
        C=rng.standard_normal((b, n, L)).astype(f),
        D=rng.standard_normal(d).astype(f),
        z=rng.standard_normal((b, d, L)).astype(f),
        delta_bias=rng.uniform(-0.5, 0.5, d).astype(f),
    )


# ------------------------------------------------------------------- torch

def torch_ssd_fwd_bwd(inputs, cs):
    import torch

    from mamba_reference import ssd_layer
    t = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    L = t["x"].shape[1]
    pad = (-L) % cs
    x, dt, B, C = t["x"], t["dt"], t["B"], t["C"]
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        dt = torch.nn.functional.pad(dt, (0, 0, 0, pad))
        B = torch.nn.functional.pad(B, (0, 0, 0, 0, 0, pad))
        C = torch.nn.functional.pad(C, (0, 0, 0, 0, 0, pad))
    y, _ = ssd_layer(x, dt, t["A"], B, C, cs, dt_softplus=True)
    y = y[:, :L] + t["x"] * t["D"][:, None]
    y = y * torch.nn.functional.silu(t["z"])
    y.backward(torch.ones_like(y))


def torch_ssd_ref_fwd_bwd(inputs, cs):
    """torch autograd through mamba_ssm's ``ssd_chunk_scan_combined_ref``
    (the chunked reference of its Triton SSD: D and the gate inside; the
    sequence length a multiple of `cs`)."""
    import torch

    from mamba_reference import ssd_chunk_scan_combined_ref
    t = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    y = ssd_chunk_scan_combined_ref()(t["x"], t["dt"], t["A"], t["B"], t["C"], cs,
                                      D=t["D"], z=t["z"], dt_softplus=True)
    y.backward(torch.ones_like(y))


def _torch_sel_forward(t):
    """selective_scan_ref's computation on the tensors `t`, each step's
    slice taken once (by unbind) so that autograd stays linear in seqlen."""
    import torch
    import torch.nn.functional as F
    u, delta, A, B, C = t["u"], t["delta"], t["A"], t["B"], t["C"]
    delta = F.softplus(delta + t["delta_bias"][..., None])
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = A.new_zeros((batch, dim, dstate))
    ys = []
    for dA, dBu, Ct in zip(deltaA.unbind(2), deltaB_u.unbind(2), C.unbind(2)):
        x = dA * x + dBu
        ys.append(torch.einsum("bdn,bn->bd", x, Ct))
    y = torch.stack(ys, dim=2) + u * t["D"][:, None]
    return y * F.silu(t["z"])


def torch_sel_fwd_bwd(inputs):
    import torch
    t = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    y = _torch_sel_forward(t)
    y.backward(torch.ones_like(y))


def check_torch_sel(inputs, dims=64, steps=256):
    """The forward of ``_torch_sel_forward`` against mamba_ssm's own
    ``selective_scan_ref`` on the first `dims` channels and `steps` steps;
    returns the largest difference relative to the largest output."""
    import torch
    from mamba_reference import selective_scan_ref
    sl = {"u": np.s_[:, :dims, :steps], "delta": np.s_[:, :dims, :steps],
          "z": np.s_[:, :dims, :steps], "A": np.s_[:dims], "D": np.s_[:dims],
          "delta_bias": np.s_[:dims], "B": np.s_[..., :steps], "C": np.s_[..., :steps]}
    t = {k: torch.from_numpy(np.ascontiguousarray(v[sl[k]])) for k, v in inputs.items()}
    with torch.no_grad():
        ours = _torch_sel_forward(t)
        ref = selective_scan_ref()(**t, delta_softplus=True)
    err = float((ours - ref).abs().max() / ref.abs().max())
    if not err < 1e-4:
        raise RuntimeError(f"the torch loop differs from selective_scan_ref: {err:.1e}")
    return err


# ------------------------------------------------------------------ zilla

def ours_ssd(inputs, backward, workers=THREADS):
    import zilla_muf
    from zilla_muf._vjp import vjp
    if not backward:
        return lambda: zilla_muf.ssd_chunk_scan_combined(
            **inputs, dt_softplus=True, workers=workers)
    ct = np.ones_like(inputs["x"])

    def run():
        y, pull = vjp(zilla_muf.ssd_chunk_scan_combined, **inputs,
                      dt_softplus=True, workers=workers)
        pull(ct)
    return run


def ours_sel(inputs, backward, workers=THREADS):
    import zilla_muf
    from zilla_muf._vjp import vjp
    if not backward:
        return lambda: zilla_muf.selective_scan(**inputs, delta_softplus=True,
                                                workers=workers)

    def run():
        y, pull = vjp(zilla_muf.selective_scan, **inputs, delta_softplus=True,
                      workers=workers)
        pull(np.ones_like(y))
    return run


def cpu_time(fn, repeat):
    """Median process CPU time (user + system, every thread) of ``fn()``
    over `repeat` runs after one warm-up: with one worker, the work done,
    whatever else the machine runs (wall times on a loaded machine inflate
    the longer call more: it is preempted more often)."""
    import resource

    def now():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    fn()
    times = []
    for _ in range(repeat):
        t0 = now()
        fn()
        times.append(now() - t0)
    return float(np.median(times))


def sgemm_gflops():
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    t = interleaved_times({"mm": lambda: a @ a}, rounds=2, repeat=3)["mm"]
    return 2 * 2048 ** 3 / t / 1e9


# ----------------------------------------------------------------- memory

def _peak_child(what):
    """Run one forward + backward in a child process; the growth of its peak
    resident memory over the resident memory before the run (MB). The peak
    is reset first (``/proc/self/clear_refs``), so that imports and input
    creation do not count."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import numpy as np, bench_layer_grads as m\n"
        "kind, side, arg = %r\n"
        "inp = m.ssd_inputs(m.SSD_SHAPES[arg]) if kind == 'ssd' else m.sel_inputs()\n"
        "import torch, zilla_muf\n"
        "torch.set_num_threads(2)\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key):\n"
        "            return int(line.split()[1])\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = status('VmRSS:')\n"
        "if side == 'torch':\n"
        "    m.torch_ssd_fwd_bwd(inp, 64) if kind == 'ssd' else m.torch_sel_fwd_bwd(inp)\n"
        "else:\n"
        "    (m.ours_ssd if kind == 'ssd' else m.ours_sel)(inp, True)()\n"
        "print((status('VmHWM:') - base) / 1024)\n"
    ) % (str(HERE), what)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(THREADS)))
    if out.returncode != 0:
        progress(out.stderr[-2000:])
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--ssd-only", action="store_true",
                        help="only the SSD rows (no selective scan, no memory; "
                             "results/ left as it is)")
    parser.add_argument("--ssd-workers", default="1,2",
                        help="worker counts of the extra SSD rows (comma list)")
    args = parser.parse_args(argv)
    ssd_workers = [int(v) for v in args.ssd_workers.split(",") if v.strip()]
    repeat = args.repeat or (3 if args.quick else 5)
    rounds = 2 if args.quick else 3
    torch_repeat = 1 if args.quick else 3
    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        torch = None
        progress("torch not installed: torch baselines skipped")
    rep = Report("layer_grads")
    if args.memory_only:
        for what in [("ssd", "ours", "b1 L4096 h8 p64 n64"),
                     ("ssd", "torch", "b1 L4096 h8 p64 n64"),
                     ("sel", "ours", None), ("sel", "torch", None)]:
            progress(f"peak memory {what}: {_peak_child(what):.0f} MB")
        return
    peak = sgemm_gflops()
    progress(f"sgemm 2048^2 float32: {peak:.1f} GFLOP/s")
    rep.add("sgemm 2048 float32", "numpy matmul", 2 * 2048 ** 3 / peak / 1e9,
            gflops=peak)
    torch_chunks = (64, 256) if args.quick else (64, 128, 256)
    for case, shape in SSD_SHAPES.items():
        inputs = ssd_inputs(shape)
        flops = 3 * ssd_flops(shape, 64)   # forward + backward ~ 3 forwards
        for w in [w for w in ssd_workers if w != THREADS]:
            times = interleaved_times({"forward": ours_ssd(inputs, False, w),
                                       "forward+backward": ours_ssd(inputs, True, w)},
                                      rounds=rounds, repeat=repeat)
            cpu = {k: cpu_time(f, repeat) for k, f in
                   (("forward", ours_ssd(inputs, False, w)),
                    ("forward+backward", ours_ssd(inputs, True, w)))}
            rep.add(f"ssd {case}", f"forward w{w}", times["forward"],
                    cpu_seconds=cpu["forward"])
            rep.add(f"ssd {case}", f"forward+backward w{w}",
                    times["forward+backward"], reference=times["forward"],
                    gflops=flops / times["forward+backward"] / 1e9,
                    cpu_seconds=cpu["forward+backward"],
                    cpu_ratio=cpu["forward+backward"] / cpu["forward"])
            progress(f"ssd {case} w{w}: CPU time forward+backward / forward = "
                     f"{cpu['forward+backward'] / cpu['forward']:.2f}")
        fns = {"forward": ours_ssd(inputs, False),
               "forward+backward": ours_ssd(inputs, True)}
        times = interleaved_times(fns, rounds=rounds, repeat=repeat)
        fwd = times["forward"]
        fb = times["forward+backward"]
        rep.add(f"ssd {case}", "forward", fwd)
        done = ssd_fwd_bwd_flops(shape, 64)
        rep.add(f"ssd {case}", "forward+backward", fb, reference=fwd,
                gflops=flops / fb / 1e9, sgemm_fraction=flops / fb / 1e9 / peak,
                gflops_executed=done / fb / 1e9,
                sgemm_fraction_executed=done / fb / 1e9 / peak)
        progress(f"ssd {case}: forward+backward {flops / fb / 1e9:.1f} GFLOP/s "
                 f"(3 forwards by the docstring's count; "
                 f"{flops / fb / 1e9 / peak:.0%} of sgemm), "
                 f"{done / fb / 1e9:.1f} GFLOP/s executed "
                 f"({done / fb / 1e9 / peak:.0%} of sgemm)")
        if torch is not None:
            # seconds per run: one warm-up and `torch_repeat` timed runs each,
            # between two timings of ours (the ratio uses their mean)
            for label, run in (("ssd_chunk_scan_combined_ref", torch_ssd_ref_fwd_bwd),
                               ("ssd_minimal_discrete", torch_ssd_fwd_bwd)):
                tt = {cs: median_time(lambda cs=cs: run(inputs, cs),
                                      repeat=torch_repeat, warmup=1)
                      for cs in torch_chunks}
                fb2 = median_time(fns["forward+backward"], repeat=repeat)
                best = min(tt, key=tt.get)
                for cs, t in tt.items():
                    rep.add(f"ssd {case}", f"torch autograd {label} cs{cs}", t,
                            reference=(fb + fb2) / 2)
                progress(f"ssd {case}: torch {label} (cs{best}) / ours fwd+bwd = "
                         f"{tt[best] / ((fb + fb2) / 2):.1f}x")
                fb = fb2
    if args.ssd_only:
        print(rep.table())      # a partial run: results/ is left as it is
        return
    inputs = sel_inputs()
    fns = {"forward": ours_sel(inputs, False),
           "forward+backward": ours_sel(inputs, True)}
    times = interleaved_times(fns, rounds=rounds, repeat=repeat)
    case = "selective b2 d1536 n16 L2048"
    rep.add(case, "forward", times["forward"])
    rep.add(case, "forward+backward", times["forward+backward"],
            reference=times["forward"])
    progress(f"{case}: forward+backward / forward = "
             f"{times['forward+backward'] / times['forward']:.2f}x (2 threads)")
    # the same ratio on one thread each (the robust signal on a busy machine)
    t1 = interleaved_times({"forward": ours_sel(inputs, False, workers=1),
                            "forward+backward": ours_sel(inputs, True, workers=1)},
                           rounds=rounds, repeat=repeat)
    rep.add(case, "forward, 1 thread", t1["forward"])
    rep.add(case, "forward+backward, 1 thread", t1["forward+backward"],
            reference=t1["forward"])
    progress(f"{case}: forward+backward / forward = "
             f"{t1['forward+backward'] / t1['forward']:.2f}x (1 thread)")
    if torch is not None:
        progress(f"{case}: torch loop vs mamba_ssm's selective_scan_ref, max "
                 f"relative difference {check_torch_sel(inputs):.1e}")
        tt = median_time(lambda: torch_sel_fwd_bwd(inputs), repeat=torch_repeat,
                         warmup=1)
        fb2 = median_time(fns["forward+backward"], repeat=repeat)
        ref = (times["forward+backward"] + fb2) / 2
        rep.add(case, "torch autograd", tt, reference=ref)
        progress(f"{case}: torch / ours = {tt / ref:.1f}x")
    if torch is not None and not args.no_memory:
        # (the "seconds" column of these rows holds gigabytes)
        for what in [("ssd", "ours", "b1 L4096 h8 p64 n64"),
                     ("ssd", "torch", "b1 L4096 h8 p64 n64"),
                     ("sel", "ours", None), ("sel", "torch", None)]:
            mb = _peak_child(what)
            rep.add(f"peak memory (GB) {what[0]} {what[2] or case}", what[1],
                    mb * 1e-3, peak_mb=mb)
            progress(f"peak memory {what}: {mb:.0f} MB")
    print(rep.table())
    rep.save()


if __name__ == "__main__":
    main()
