"""Benchmarks of zilla_muf.torch: transformers' Mamba-2 on zilla_muf vs its torch path.

Cases (2 threads both sides: ``torch.set_num_threads(2)``, ``workers`` taken
from it)
-----
* A training step (forward, backward) of a ``Mamba2ForCausalLM`` with
  hidden size 256, 4 layers, 8 heads of 64, state 64, chunk 128, batch 2,
  seqlen 1024, built from its config (random weights): patched with
  :func:`zilla_muf.torch.apply_to_mamba2` against transformers' own torch
  path, in the same process and run.
* Greedy decoding of 64 tokens after a 512-token prompt, batch 1, with the
  cache (prefill, then one decode step per token).
* The same decoding with a ``MambaForCausalLM`` (Mamba-1: hidden size 256,
  4 layers, state 16), patched with :func:`zilla_muf.torch.apply_to_mamba`.

Ratios are zilla_muf time / transformers time (below 1 is faster). The
patched training step is also broken down by operator (torch.profiler, one
step): the share of the Mamba-2 layers (convolution, SSD and gated norm in
one operator, forward and backward; the other operators where a call takes
them), of the RMS norms, of the matrix products of the linear layers and of
torch's copies and concatenations, recorded as extra rows (``part``). Run ``python bench/bench_torch.py [--quick] [--threads N]``;
results go to ``bench/results/torch.json`` (with ``--threads`` other than 2,
to ``torch-N-threads.json``).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Report, interleaved_times, progress  # noqa: E402


def _model(torch, transformers, layers):
    cfg = transformers.Mamba2Config(
        vocab_size=1024, hidden_size=256, num_hidden_layers=layers, num_heads=8,
        head_dim=64, expand=2, state_size=64, n_groups=1, chunk_size=128,
        conv_kernel=4)
    torch.manual_seed(0)
    return transformers.Mamba2ForCausalLM(cfg)


class _Patch:
    """Switch the process-wide patch on and off between timed calls."""

    names = ("causal_conv1d_fn", "causal_conv1d_update", "mamba2_chunk_scan",
             "mamba2_selective_state_update", "mamba2_split_conv1d_scan_combined")

    def __init__(self, mod):
        self.mod = mod
        self.names = tuple(k for k in self.names if hasattr(mod, k))
        self.saved = {k: getattr(mod, k) for k in self.names}
        # the norms' forward, and the mixer's (its fused decoding step)
        self.methods = (mod.MambaRMSNormGated, mod.Mamba2RMSNorm, mod.Mamba2Mixer)
        self.saved_methods = [c.forward for c in self.methods]

    def on(self):
        import zilla_muf.torch as zt

        zt.apply_to_mamba2()
        self.patched = {k: getattr(self.mod, k) for k in self.names}
        self.patched_methods = [c.forward for c in self.methods]

    def use(self, patched):
        src = self.patched if patched else self.saved
        for k, v in src.items():
            setattr(self.mod, k, v)
        for c, f in zip(self.methods, self.patched_methods if patched
                        else self.saved_methods):
            c.forward = f


# operator name (torch.profiler) -> part of the patched training step
# (a forward kernel's time is recorded under its autograd node's name)
_PARTS = {
    "zilla_muf::mamba2_split_layer_backward": "Mamba-2 layer backward",
    "zilla_muf::mamba2_split_layer": "Mamba-2 layer forward",
    "GeneratedBackwardFor_zilla_muf_mamba2_split_layer_default": "Mamba-2 layer forward",
    "zilla_muf::ssd_combined_backward": "SSD backward",
    "zilla_muf::ssd_combined": "SSD forward",
    "GeneratedBackwardFor_zilla_muf_ssd_combined_default": "SSD forward",
    "zilla_muf::causal_conv1d_backward": "causal conv backward",
    "zilla_muf::causal_conv1d": "causal conv forward",
    "GeneratedBackwardFor_zilla_muf_causal_conv1d_default": "causal conv forward",
    "zilla_muf::rms_norm_backward": "RMS norms backward",
    "zilla_muf::rms_norm": "RMS norms forward",
    "GeneratedBackwardFor_zilla_muf_rms_norm_default": "RMS norms forward",
    "aten::mm": "linear layers (aten::mm)",
    "aten::copy_": "copies (aten::copy_)",
    "aten::cat": "concatenations (aten::cat)",
}


def _breakdown(report, case, torch, step):
    """Self CPU time of the parts of one patched step, as rows of `report`.

    CPU time of the operators (summed over threads); its sum over all
    operators is the ``total`` row. Recorded as ``part`` rows, each with its
    share of the total."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) * 1e-6
    parts = {}
    for e in events:
        part = _PARTS.get(e.key)
        if part is not None:
            parts[part] = parts.get(part, 0.0) + e.self_cpu_time_total * 1e-6
    for part, seconds in parts.items():
        report.add(case + " [profile]", part, seconds, part=True,
                   share=seconds / total)
    report.add(case + " [profile]", "total (all operators)", total, part=True,
               share=1.0)


def _mamba1_generation(report, torch, transformers, prompt, new, rounds):
    import transformers.models.mamba.modeling_mamba as m1

    import zilla_muf.torch as zt

    names = [k for k in ("causal_conv1d_fn", "causal_conv1d_update",
                         "mamba_selective_scan", "mamba_selective_state_update")
             if hasattr(m1, k)]
    saved = {k: getattr(m1, k) for k in names}
    saved_forward = m1.MambaMixer.forward
    zt.apply_to_mamba()
    patched = {k: getattr(m1, k) for k in names}
    patched_forward = m1.MambaMixer.forward
    cfg = transformers.MambaConfig(vocab_size=1024, hidden_size=256,
                                   num_hidden_layers=4, state_size=16, expand=2,
                                   conv_kernel=4)
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(cfg).eval()

    def use(on):
        for k, v in (patched if on else saved).items():
            setattr(m1, k, v)
        m1.MambaMixer.forward = patched_forward if on else saved_forward

    case = (f"MambaForCausalLM greedy generate {new} tokens after a "
            f"{prompt.shape[1]}-token prompt, b1")
    _time_generation(report, case, "zilla_muf.torch.apply_to_mamba", torch, model,
                     prompt, new, rounds, use)
    use(False)


def _time_generation(report, case, name, torch, model, prompt, new, rounds, use):
    """Greedy generation of `new` tokens after `prompt`, unpatched and
    patched (``use(patched)`` switches), as two rows of `report`."""
    def generate(patched):
        def run():
            use(patched)
            with torch.no_grad():
                model.generate(prompt, max_new_tokens=new, min_new_tokens=new,
                               do_sample=False)
        return run

    times = interleaved_times({"transformers": generate(False),
                               "zilla_muf": generate(True)}, rounds=rounds, repeat=3)
    ref = report.add(case, "transformers torch path", times["transformers"])["seconds"]
    report.add(case, name, times["zilla_muf"], ref)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch.set_num_threads for both sides (default 2)")
    args = parser.parse_args(argv)
    import torch
    import transformers
    import transformers.models.mamba2.modeling_mamba2 as m2

    torch.set_num_threads(args.threads)
    report = Report("torch" if args.threads == 2 else f"torch-{args.threads}-threads")
    patch = _Patch(m2)
    patch.on()
    layers = 4
    seqlen = 256 if args.quick else 1024
    model = _model(torch, transformers, layers)
    ids = torch.randint(0, 1024, (2, seqlen), generator=torch.Generator().manual_seed(1))

    def train_step(patched):
        def run():
            patch.use(patched)
            model.zero_grad(set_to_none=True)
            model(ids, labels=ids).loss.backward()
        return run

    rounds = 1 if args.quick else 3
    times = interleaved_times({"transformers": train_step(False),
                               "zilla_muf": train_step(True)},
                              rounds=rounds, repeat=3)
    case = f"Mamba2ForCausalLM train step b2 L{seqlen} ({layers} layers, h8x64, n64)"
    ref = report.add(case, "transformers torch path", times["transformers"])["seconds"]
    report.add(case, "zilla_muf.torch.apply_to_mamba2", times["zilla_muf"], ref)
    _breakdown(report, case, torch, train_step(True))

    model.eval()
    prompt_len, new = (128, 16) if args.quick else (512, 64)
    prompt = ids[:1, :prompt_len]

    case = f"greedy generate {new} tokens after a {prompt_len}-token prompt, b1"
    _time_generation(report, case, "zilla_muf.torch.apply_to_mamba2", torch, model,
                     prompt, new, rounds, patch.use)
    patch.use(False)
    _mamba1_generation(report, torch, transformers, ids[:1, :prompt_len], new, rounds)
    progress(report.table())
    print(report.table())
    report.save()


if __name__ == "__main__":
    main()
