"""Turn the JSON results in bench/results/ into the documentation's tables
and plots (docs/_static/bench/).

    python bench/report.py

Every suite's JSON holds the machine it ran on and rows of
(case, name, seconds, ratio). The tables list every row; a plot per suite
shows each case's times relative to its reference. Sweep suites (rows with a
``size`` field) are drawn as time-versus-size curves.
"""

import json
import re
from collections import OrderedDict
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE.parent / "docs" / "_static" / "bench"

TITLES = {
    "scan": "Scans (zilla_muf.scan)",
    "scan_sweep": "Scans by size",
    "sweeps": "Primitives and layers by size",
    "stable_ops": "Stable operations (zilla_muf.stable_ops)",
    "structured": "Structured matvecs and FFT convolution",
    "ssd": "Mamba-2 SSD (zilla_muf.ssd)",
    "selective": "Mamba-1 selective scan and layers (zilla_muf.selective)",
    "load": "workers=2 against workers=1 on a loaded machine",
    "linear_attention": "GLA and the gated delta rule (zilla_muf.linear_attention)",
    "decays": "Strongly against mildly decaying inputs (SSD, linear attention, selective scan)",
    "layer_grads": "Gradients of the layers (forward + backward)",
}


def _machine_line(m):
    return (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores; Python "
            f"{m.get('python', '?')}, NumPy {m.get('numpy', '?')}, SciPy "
            f"{m.get('scipy', '?')}, zilla-muf {m.get('zilla_muf', '?')} "
            f"(OpenMP: {m.get('openmp', '?')})")


def _rst_text(text):
    """`text` as plain reStructuredText: markup characters escaped (a
    trailing underscore, as in ``aten::copy_``, would make a reference)."""
    return re.sub(r"([\\`*_|])", r"\\\1", text)


def _rst_table(rows, has_ratio):
    head = ["case", "method", "time (ms)"] + (["ratio"] if has_ratio else [])
    body = []
    for r in rows:
        line = [_rst_text(r["case"]), _rst_text(r["name"]), f"{r['seconds'] * 1e3:.3f}"]
        if has_ratio:
            line.append(f"{r['ratio']:.2f}" if "ratio" in r else "")
        body.append(line)
    out = [".. list-table::", "   :header-rows: 1", ""]
    for line in [head] + body:
        out.append("   * - " + line[0])
        out.extend("     - " + cell for cell in line[1:])
    return "\n".join(out)


def _plot_ratios(suite, rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = OrderedDict()
    for r in rows:
        if "ratio" in r:
            cases.setdefault(r["case"], []).append(r)
    if not cases:
        return False
    n = len(cases)
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.0 + 0.32 * sum(len(v) for v in cases.values()) + 0.6 * n),
                             squeeze=False)
    for ax, (case, rs) in zip(axes[:, 0], cases.items()):
        names = [r["name"] for r in rs][::-1]
        ratios = [r["ratio"] for r in rs][::-1]
        colors = ["#999999" if r["ratio"] == 1.0 else "#1f77b4" for r in rs][::-1]
        ax.barh(names, ratios, color=colors)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(case, fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
        ax.set_xlabel("time / reference (lower is faster)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _plot_sweep(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = OrderedDict()
    for r in rows:
        panels.setdefault(r["case"], OrderedDict()).setdefault(r["name"], []).append(
            (r["size"], r["seconds"]))
    n = len(panels)
    cols = 2
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(10, 3.4 * nrows), squeeze=False)
    for ax, (case, series) in zip(axes.flat, panels.items()):
        for name, pts in series.items():
            pts.sort()
            xs = [p[0] for p in pts]
            ys = [p[1] * 1e9 / p[0] for p in pts]
            style = "--" if "roofline" in name else "-"
            ax.plot(xs, ys, style, marker="o", ms=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(case, fontsize=9)
        ax.set_xlabel("elements", fontsize=8)
        ax.set_ylabel("ns per element", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    parts = []
    files = sorted(RESULTS.glob("*.json"), key=lambda p: list(TITLES).index(p.stem)
                   if p.stem in TITLES else len(TITLES))
    first_machine = None
    for f in files:
        data = json.loads(f.read_text())
        if not isinstance(data, dict) or "suite" not in data:
            continue  # a suite's auxiliary record, not a table of rows
        suite = data["suite"]
        rows = data["rows"]
        machine = _machine_line(data["machine"])
        if first_machine is None:
            parts.append(f"Machine: {machine}.\n")
            first_machine = machine
        title = TITLES.get(suite, suite)
        parts.append(f"{title}\n{'-' * len(title)}\n")
        if machine != first_machine:
            # a suite recorded in a later run, on another machine
            parts.append(f"Recorded on another machine: {machine}.\n")
        png = OUT / f"{suite}.png"
        if any("size" in r for r in rows):
            drawn = _plot_sweep(rows, png)
        else:
            drawn = _plot_ratios(suite, rows, png)
        if drawn:
            parts.append(f".. image:: _static/bench/{png.name}\n   :alt: {title}\n")
        if not any("size" in r for r in rows):
            parts.append(_rst_table(rows, any("ratio" in r for r in rows)) + "\n")
    (OUT / "tables.inc").write_text("\n".join(parts) if parts else
                                    "No benchmark results have been recorded yet.\n")
    print(f"written: {OUT / 'tables.inc'}")


if __name__ == "__main__":
    main()
