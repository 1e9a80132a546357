"""Load mamba_ssm's pure-PyTorch reference listings at run time.

mamba_ssm (https://github.com/state-spaces/mamba) ships two CPU-runnable
listings beside its CUDA and Triton kernels: ``ssd_minimal_discrete``
(mamba_ssm/modules/ssd_minimal.py, listing 1 of the Mamba-2 paper) and
``selective_scan_ref`` (mamba_ssm/ops/selective_scan_interface.py). The
package cannot be installed or imported without CUDA: its setup.py builds
extensions, and both files import Triton or CUDA modules at the top.

So this module downloads the pinned source release from PyPI with urllib
(no build step runs), checks its sha256, unpacks the two files into a cache
directory (``ZILLA_MUF_MAMBA_CACHE``, default ``~/.cache/zilla-muf/mamba``),
and compiles the named top-level functions of each shipped file, with the
file's own ``torch`` and ``einops`` imports, into a fresh namespace; the
file's other imports (Triton kernels, CUDA extensions) are left out.
The code that runs is mamba_ssm's, unchanged; nothing of it is copied into
this repository. A failed download raises RuntimeError.
"""

import ast
import functools
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import types
import urllib.error
import urllib.request

VERSION = "2.3.2.post1"
SDIST = f"mamba_ssm-{VERSION}.tar.gz"
SHA256 = "104cc47e9101e5401a675fa2b784f2952b9b037f3b1dd83b5ac544394e95d028"

# name: the files in the release and the top-level functions of each that
# make up the listing (compiled into one namespace, in this order)
LISTINGS = {
    "ssd_minimal": (("mamba_ssm/modules/ssd_minimal.py",
                     ("segsum", "ssd_minimal_discrete")),),
    "selective_scan": (("mamba_ssm/ops/selective_scan_interface.py",
                        ("selective_scan_ref",)),),
    # the chunked reference of the Triton SSD, the issue tracker's baseline
    # for the layer: chunk states, state passing, chunk scan, combined
    "ssd_combined": (("mamba_ssm/ops/triton/ssd_chunk_state.py", ("chunk_state_ref",)),
                     ("mamba_ssm/ops/triton/ssd_state_passing.py", ("state_passing_ref",)),
                     ("mamba_ssm/ops/triton/ssd_chunk_scan.py", ("chunk_scan_ref",)),
                     ("mamba_ssm/ops/triton/ssd_combined.py",
                      ("ssd_chunk_scan_combined_ref",))),
}
_IMPORTS_KEPT = ("torch", "einops")


def cache_dir():
    return os.environ.get(
        "ZILLA_MUF_MAMBA_CACHE",
        os.path.join(os.path.expanduser("~"), ".cache", "zilla-muf", "mamba"))


def _get(url):
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def _sdist_url():
    """The sdist's URL from PyPI's JSON API, its listed sha256 checked."""
    try:
        files = json.loads(_get(f"https://pypi.org/pypi/mamba-ssm/{VERSION}/json"))["urls"]
    except urllib.error.HTTPError:  # some mirrors serve only the project page
        files = json.loads(_get("https://pypi.org/pypi/mamba-ssm/json"))["releases"][VERSION]
    for f in files:
        if f["packagetype"] == "sdist" and f["filename"] == SDIST:
            if f["digests"]["sha256"] != SHA256:
                raise RuntimeError(f"PyPI lists sha256 {f['digests']['sha256']} for "
                                   f"{SDIST}, expected {SHA256}")
            return f["url"]
    raise RuntimeError(f"PyPI lists no {SDIST}")


def source_root():
    """The directory holding the release's listing files (fetched on first use)."""
    root = os.path.join(cache_dir(), f"mamba_ssm-{VERSION}")
    files = [f for parts in LISTINGS.values() for f, _ in parts]
    if all(os.path.isfile(os.path.join(root, f)) for f in files):
        return root
    try:
        data = _get(_sdist_url())
    except (OSError, KeyError, ValueError) as exc:
        raise RuntimeError(f"downloading {SDIST} from PyPI failed: {exc!r}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise RuntimeError(f"{SDIST} has sha256 {digest}, expected {SHA256}")
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_dir())
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names = [f"mamba_ssm-{VERSION}/{f}" for f in files]
            tar.extractall(tmp, members=[tar.getmember(n) for n in names],
                           filter="data")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(os.path.join(tmp, f"mamba_ssm-{VERSION}"), root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


@functools.lru_cache(maxsize=None)
def load(name):
    """A namespace with the functions of listing `name` (a key of LISTINGS).

    For each file of the listing, its torch/einops imports run first, then
    its named function definitions, compiled from the file (tracebacks
    point into it); the files share one namespace, so a function finds the
    others of its listing as the release's own imports would give them.
    """
    mod = types.ModuleType(f"_mamba_ssm_{name}")
    for relpath, functions in LISTINGS[name]:
        path = os.path.join(source_root(), relpath)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        body = []
        for node in tree.body:
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                roots = None
            if roots is not None and roots <= set(_IMPORTS_KEPT):
                body.append(node)
            elif isinstance(node, ast.FunctionDef) and node.name in functions:
                body.append(node)
        missing = set(functions) - {n.name for n in body
                                    if isinstance(n, ast.FunctionDef)}
        if missing:
            raise RuntimeError(f"{path} defines no {sorted(missing)}")
        mod.__file__ = path
        exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"),
             mod.__dict__)
    return mod


def ssd_minimal_discrete():
    return load("ssd_minimal").ssd_minimal_discrete


def selective_scan_ref():
    return load("selective_scan").selective_scan_ref


def ssd_chunk_scan_combined_ref():
    return load("ssd_combined").ssd_chunk_scan_combined_ref


def ssd_layer(x, dt, A, B, C, block_len, *, dt_bias=None, dt_softplus=False,
              listing=None):
    """The Mamba-2 layer on ``ssd_minimal_discrete``, called as mamba_ssm's
    own check of it does: x (b, l, h, p), dt (b, l, h), A (h,), B and C
    (b, l, g, n) with the groups repeated to heads; l a multiple of
    `block_len`. Returns (y, final_state). `listing` is the loaded function
    (loaded here when None)."""
    import torch.nn.functional as F

    if listing is None:
        listing = ssd_minimal_discrete()
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    h, g = x.shape[2], B.shape[2]
    B = B.repeat_interleave(h // g, dim=2)
    C = C.repeat_interleave(h // g, dim=2)
    return listing(x * dt[..., None], A * dt, B, C, block_len)
