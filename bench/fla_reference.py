"""Load flash-linear-attention's naive PyTorch references at run time.

FLA (https://github.com/fla-org/flash-linear-attention) ships CPU-runnable
reference listings beside its Triton kernels, but ``import fla`` needs
triton. This module fetches FLA's source release with pip into a cache
directory (``ZILLA_MUF_FLA_CACHE``, default ``~/.cache/zilla-muf/fla``) and
loads single files by path; nothing of FLA is copied into this repository.
The listings import torch and einops.
"""

import glob
import importlib.util
import os
import subprocess
import sys
import tarfile

FLA_REQUIREMENT = "fla-core==0.6.0"

FILES = {
    "simple_gla": "fla/ops/simple_gla/naive.py",
    "gla": "fla/ops/gla/naive.py",
    "gated_delta_rule": "fla/ops/gated_delta_rule/naive.py",
}


def cache_dir():
    return os.environ.get(
        "ZILLA_MUF_FLA_CACHE",
        os.path.join(os.path.expanduser("~"), ".cache", "zilla-muf", "fla"))


def source_root():
    """The unpacked source release (downloaded on first use).

    Raises RuntimeError with pip's message when it cannot be fetched.
    """
    root = cache_dir()
    found = glob.glob(os.path.join(root, "fla_core-*", "fla", "ops"))
    if found:
        return os.path.dirname(os.path.dirname(found[0]))
    os.makedirs(root, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "-q", "-d", root, FLA_REQUIREMENT],
        capture_output=True, text=True, timeout=600)
    tars = glob.glob(os.path.join(root, "fla_core-*.tar.gz"))
    if proc.returncode != 0 or not tars:
        raise RuntimeError(f"pip download {FLA_REQUIREMENT} failed: "
                           f"{proc.stderr.strip()[-500:]}")
    with tarfile.open(tars[0]) as tar:
        members = [m for m in tar.getmembers() if "/fla/ops/" in m.name
                   and m.name.endswith(".py")]
        tar.extractall(root, members=members, filter="data")
    found = glob.glob(os.path.join(root, "fla_core-*", "fla", "ops"))
    if not found:
        raise RuntimeError(f"no fla/ops in {tars[0]}")
    return os.path.dirname(os.path.dirname(found[0]))


def load(name):
    """The module of FLA's naive listing `name` (a key of FILES)."""
    path = os.path.join(source_root(), FILES[name])
    spec = importlib.util.spec_from_file_location(f"_fla_naive_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
