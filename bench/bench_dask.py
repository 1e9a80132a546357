"""zilla_muf.dask at scale: a distributed batch, and a sequence streamed from Zarr.

    python bench/bench_dask.py [--part batch|stream|all] [--repeat N]
                               [--log2n 26] [--block-log2 24] [--store DIR]

Part "batch": 64 x 2**20 float32 scans (a uniform in [0.9, 1], b normal),
``linear_scan`` on a ``distributed.LocalCluster`` of 2 single-thread worker
processes, against the in-memory ``zilla_muf.linear_scan`` on 1 thread and
the memory roofline ``np.add(a, b, out=h)`` timed in the same run.

What is timed. The inputs are created on the workers and persisted there
before any timing (as data loaded in parallel from storage would be; the
in-memory baseline starts from arrays already in memory): nothing is
shipped from the client. The timed step is building the graph, scheduling
and running it, and holding the result on the workers (``persist`` and
``wait``): nothing is gathered back. The in-memory baseline does the same
pipeline on one thread: ``linear_scan(A, B)`` into a new output array, as
every Dask task writes a new block. Two layouts: 16 blocks along the batch
(4 rows each, no carry: 16 tasks) and 16 blocks along the sequence (the
affine carry: a summary pass into a reused buffer, one carry task, and the
recomputing pass). The threaded-scheduler row stores into a preallocated,
already touched output; its reference is the in-memory scan into the same
output (``out=``), since a fresh output costs its page faults (about as
much as the scan on this machine). Two more graphs of the same 16 batch
blocks measure what any task graph of them costs on this cluster: tasks
that return one column of their block (the scheduling floor) and tasks of
``np.add`` (the least work that reads both blocks and writes a new one).

Part "stream": one sequence of 2**log2n float32 steps, ``a`` and ``b`` in a
Zarr store on disk in blocks of 2**block_log2, scanned and written back to
Zarr by the same cluster; reports the wall time, GB/s (inputs read once and
the output written, 12 bytes a step) and the peak RSS of every worker
(``ru_maxrss``; the workers are restarted after the data is written so the
peak is the scan's alone).

Results: ``bench/results/dask.json`` and the plot ``docs/_static/bench/dask_scale.png``.
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Report, progress  # noqa: E402

PLOT = (Path(__file__).resolve().parent.parent / "docs" / "_static" / "bench"
        / "dask_scale.png")  # report.py owns dask.png (the ratio plot)


def _cluster(nworkers=2):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=nworkers, threads_per_worker=1,
                           processes=True, dashboard_address=":0",
                           memory_limit="6GiB", silence_logs=40)
    client = Client(cluster)
    _warm(client)
    return cluster, client


def _warm(client):
    """Import the package in every worker before anything is timed (an
    editable install checks its build on first import)."""
    def load():
        import zilla_muf.dask  # noqa: F401
    client.run(load)


def _peak_rss(client):
    """Peak resident set (the kernel's VmHWM) of every worker process, in bytes."""
    def hwm():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return client.run(hwm)


class _RssSampler:
    """The largest RSS seen in each worker process, sampled every 50 ms from
    outside (a check on the high-water mark the workers report)."""

    def __init__(self, client):
        import threading

        self.pids = list(client.run(os.getpid).values())
        self.peak = {pid: 0 for pid in self.pids}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            for pid in self.pids:
                try:
                    with open(f"/proc/{pid}/statm") as f:
                        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                    self.peak[pid] = max(self.peak[pid], rss)
                except OSError:
                    pass
            self.stop.wait(0.05)

    def close(self):
        self.stop.set()
        self.thread.join()
        return list(self.peak.values())


def _incoming_bytes(client):
    """Bytes every worker has fetched from the others so far."""
    def total(dask_worker):
        log = getattr(dask_worker, "transfer_incoming_log", None)
        if log is None:
            log = getattr(dask_worker.state, "transfer_incoming_log", [])
        return int(sum(entry.get("total", 0) for entry in log))
    return sum(client.run(total).values())


def _timed_persist(make, repeat):
    from distributed import wait

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = make().persist()
        wait(out)
        times.append(time.perf_counter() - t0)
        del out
    return float(np.median(times)), times


def _first_column(a, b):
    return a[:, :1].copy()


def part_batch(report, repeat):
    import dask.array as da
    from threadpoolctl import threadpool_limits

    import zilla_muf
    import zilla_muf.dask as zd

    rows, n = 64, 2 ** 20
    cluster, client = _cluster()
    try:
        from distributed import wait

        rng = da.random.default_rng(20261202)
        a = rng.uniform(0.9, 1.0, (rows, n), chunks=(4, n)).astype(np.float32)
        b = rng.standard_normal((rows, n), chunks=(4, n)).astype(np.float32)
        # a block of `a` and the block of `b` it meets live on the same
        # worker (one stacked block each), as in-memory data is all local
        ab = da.stack([a, b]).rechunk((2, 4, n)).persist()
        abt = ab.rechunk((2, rows, n // 16)).persist()
        wait([ab, abt])
        a, b = client.persist([ab[0], ab[1]])
        at, bt = client.persist([abt[0], abt[1]])
        wait([a, b, at, bt])
        A, B = client.compute([a, b], sync=True)
        H = np.empty_like(A)
        with threadpool_limits(1):
            zilla_muf.linear_scan(A, B, workers=1)  # warm up, first touch
            zilla_muf.linear_scan(A, B, workers=1, out=H)
            t_mem = []
            t_out = []
            t_roof = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                zilla_muf.linear_scan(A, B, workers=1)
                t_mem.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                zilla_muf.linear_scan(A, B, workers=1, out=H)
                t_out.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                np.add(A, B, out=H)
                t_roof.append(time.perf_counter() - t0)
        ref = float(np.median(t_mem))
        ref_out = float(np.median(t_out))
        case = f"batch {rows} x 2^20 float32"
        report.add(case, "in-memory linear_scan, 1 thread", ref, ref)
        report.add(case, "in-memory linear_scan into a warm out=, 1 thread",
                   ref_out, ref)
        report.add(case, "np.add roofline, 1 thread", float(np.median(t_roof)), ref)
        _timed_persist(lambda: zd.linear_scan(a, b), 1)  # warm the workers
        moved0 = _incoming_bytes(client)
        t_batch, _ = _timed_persist(lambda: zd.linear_scan(a, b), repeat)
        moved_batch = (_incoming_bytes(client) - moved0) / repeat
        g = zd.linear_scan(a, b)
        report.add(case, "dask, 16 blocks along batch, 2 workers", t_batch, ref,
                   speedup=ref / t_batch, tasks=len(g.__dask_graph__()),
                   bytes_moved=moved_batch)
        # what any graph of these 16 blocks costs on this cluster: tasks that
        # only return one column of their block (scheduling alone), and
        # tasks of np.add (the least work that reads both blocks and writes
        # a new one). Fresh names, so that no result is reused.
        for label, fn in (("dask floor: 16 tasks returning a column", _first_column),
                          ("dask roofline: 16 tasks of np.add", np.add)):
            t_floor, _ = _timed_persist(
                lambda fn=fn: da.map_blocks(fn, a, b, dtype=np.float32,
                                            name=f"floor-{uuid.uuid4().hex}"),
                repeat)
            report.add(case, label, t_floor, ref, speedup=ref / t_floor)
        moved0 = _incoming_bytes(client)
        t_time, _ = _timed_persist(lambda: zd.linear_scan(at, bt), repeat)
        moved_time = (_incoming_bytes(client) - moved0) / repeat
        g = zd.linear_scan(at, bt)
        report.add(case, "dask, 16 blocks along time, 2 workers", t_time, ref,
                   speedup=ref / t_time, tasks=len(g.__dask_graph__()),
                   bytes_moved=moved_time)
    finally:
        client.close()
        cluster.close()
    # the same graph in this process: Dask's threaded scheduler, 2 threads
    # (the kernels release the GIL), each block stored straight into a
    # preallocated result
    import dask

    Ad = da.from_array(A, chunks=(4, n))
    Bd = da.from_array(B, chunks=(4, n))
    t_thr = []
    with threadpool_limits(1), dask.config.set(scheduler="threads", num_workers=2):
        da.store(zd.linear_scan(Ad, Bd), H)
        for _ in range(repeat):
            t0 = time.perf_counter()
            da.store(zd.linear_scan(Ad, Bd), H)
            t_thr.append(time.perf_counter() - t0)
    t_thr = float(np.median(t_thr))
    # it stores into the warm H: its reference is the in-memory scan into
    # the same warm output
    report.add(case, "dask threaded scheduler into a warm output, 16 blocks "
               "along batch, 2 threads (vs in-memory into out=)", t_thr, ref_out,
               speedup=ref_out / t_thr)
    return {"in-memory, 1 thread": ref, "in-memory into out=, 1 thread": ref_out,
            "roofline, 1 thread": float(np.median(t_roof)),
            "dask, batch blocks": t_batch, "dask, time blocks": t_time,
            "dask threads (vs out=), batch blocks": t_thr}


def part_stream(report, log2n, block_log2, store):
    import dask.array as da
    import zarr

    import zilla_muf.dask as zd

    n, blk = 2 ** log2n, 2 ** block_log2
    root = Path(store or tempfile.mkdtemp(prefix="zilla_dask_"))
    root.mkdir(parents=True, exist_ok=True)
    paths = {k: str(root / f"{k}.zarr") for k in ("a", "b", "h")}
    for p in paths.values():
        shutil.rmtree(p, ignore_errors=True)
    cluster, client = _cluster()
    try:
        progress(f"stream: writing a and b, 2^{log2n} float32 steps, to {root}")
        rng = da.random.default_rng(7)
        a = rng.uniform(0.999, 1.0, n, chunks=blk).astype(np.float32)
        b = rng.standard_normal(n, chunks=blk).astype(np.float32)
        da.to_zarr(a, paths["a"], compressors=None)
        da.to_zarr(b, paths["b"], compressors=None)
        client.restart()  # fresh workers: the peak RSS below is the scan's
        _warm(client)
        a = da.from_zarr(paths["a"])
        b = da.from_zarr(paths["b"])
        h = zd.linear_scan(a, b)
        tasks = len(h.__dask_graph__())
        moved0 = _incoming_bytes(client)
        sampler = _RssSampler(client)
        t0 = time.perf_counter()
        da.to_zarr(h, paths["h"], compressors=None)
        seconds = time.perf_counter() - t0
        sampled = sampler.close()
        moved = _incoming_bytes(client) - moved0
        peaks = _peak_rss(client)
        out = zarr.open_array(paths["h"], mode="r")
        ok = out.shape == (n,) and np.isfinite(out[-blk:]).all()
    finally:
        client.close()
        cluster.close()
        if store is None:
            shutil.rmtree(root, ignore_errors=True)
    gbs = 12 * n / seconds / 1e9
    report.add(f"stream 2^{log2n} float32 via Zarr, blocks 2^{block_log2}",
               "dask linear_scan, 2 workers", seconds, None, gb_per_s=gb_s_fmt(gbs),
               peak_rss_gib=[p / 2 ** 30 for p in peaks.values()],
               sampled_peak_rss_gib=[p / 2 ** 30 for p in sampled], tasks=tasks,
               bytes_moved=moved, output_checked=bool(ok))
    progress(f"stream: {seconds:.1f} s, {gbs:.2f} GB/s, peak RSS per worker "
             + ", ".join(f"{p / 2 ** 30:.2f} GiB" for p in peaks.values())
             + " (sampled: " + ", ".join(f"{p / 2 ** 30:.2f}" for p in sampled) + ")")
    return {"seconds": seconds, "gbs": gbs,
            "peaks": [p / 2 ** 30 for p in peaks.values()], "log2n": log2n}


def gb_s_fmt(x):
    return round(float(x), 3)


def plot(batch, stream):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2 if stream else 1, figsize=(10 if stream else 6, 3.6),
                             squeeze=False)
    ax = axes[0, 0]
    if batch:
        names = list(batch)
        ax.barh(names, [batch[k] for k in names],
                color=["0.5", "0.6", "0.75", "C0", "C1", "C2"][:len(names)])
        ax.set_xlabel("seconds (median)")
        ax.set_title("64 x 2^20 float32 scans")
        for i, k in enumerate(names):
            # the threaded run stores into a warm output: its reference is
            # the in-memory scan into a warm out=
            ref = batch.get("in-memory into out=, 1 thread") if "threads" in k \
                else None
            ref = ref or batch["in-memory, 1 thread"]
            ax.text(batch[k], i, f" {ref / batch[k]:.2f}x", va="center")
    if stream:
        ax = axes[0, 1]
        peaks = stream["peaks"]
        ax.bar([f"worker {i}" for i in range(len(peaks))], peaks, color="C0")
        ax.axhline(2.0, color="C3", ls="--", label="2 GiB")
        ax.set_ylabel("peak RSS (GiB)")
        ax.set_title(f"2^{stream['log2n']} steps from Zarr: "
                     f"{stream['seconds']:.0f} s, {stream['gbs']:.2f} GB/s")
        ax.legend()
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    progress(f"plot: {PLOT}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["batch", "stream", "all"], default="all")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--log2n", type=int, default=26)
    parser.add_argument("--block-log2", type=int, default=24)
    parser.add_argument("--store", default=None,
                        help="directory for the Zarr stores (default: a temporary one)")
    parser.add_argument("--aux", default=None,
                        help="save the rows as the auxiliary record "
                             "bench/results/<AUX>.json (not a suite table) and "
                             "leave the plot alone: for a one-off run such as 2^31 steps")
    args = parser.parse_args(argv)
    report = Report("dask")
    batch = stream = None
    if args.part in ("batch", "all"):
        batch = part_batch(report, args.repeat)
    if args.part in ("stream", "all"):
        stream = part_stream(report, args.log2n, args.block_log2, args.store)
    print(report.table())
    if args.aux:
        import json

        from _harness import RESULTS, machine

        path = RESULTS / f"{args.aux}.json"
        path.write_text(json.dumps({"record_of": "dask", "machine": machine(),
                                    "rows": report.rows}, indent=1))
        progress(f"written: {path}")
        return
    report.save()
    plot(batch, stream)


if __name__ == "__main__":
    main()
