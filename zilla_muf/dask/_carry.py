"""Graph building for the Dask wrappers: blocks, carries, corrections.

Design: every wrapper in :mod:`zilla_muf.dask._wrappers` turns its operands
into dask arrays laid out with the sequence axis last and the same chunks,
then builds a graph whose tasks call the in-memory functions of
``zilla_muf`` on one block each. Nothing here computes anything at graph
construction time, and nothing here implements a kernel: the tasks are the
in-memory functions plus the bookkeeping of which block sees which state.

Three patterns, one helper each:

- :func:`affine_carry` -- the scans. Every block but the first in scan order
  runs the in-memory scan from a zero state and reports a summary
  ``(P, E)``: the product of ``a`` over the block and the end state. The
  summaries compose as affine maps ``s -> P s + E``; they are combined
  sequentially (``P_k s + E_k``, one tiny task per block) or, from
  :data:`TREE_MIN_BLOCKS` blocks on, by a Hillis-Steele prefix tree of
  depth ``log2(nblocks)``. Each block is then recomputed by the in-memory
  scan from its incoming state (``h0``), so its output never waits in
  memory for the carry.
- :func:`state_chain` -- the SSD, the selective scan: block ``k`` runs with
  ``initial_states`` = the final states of block ``k - 1``.
- the causal convolution's halo and the block-Toeplitz products are built in
  the wrappers from :func:`block_grid` and :func:`assemble`.
"""

import functools

import numpy as np
from dask import delayed
import dask.array as da

from .._validation import as_array

__all__ = ["TREE_MIN_BLOCKS", "affine_carry", "assemble", "block_grid",
           "lazy", "state_chain"]

#: From this many blocks along the sequence on, the scan carry is combined
#: by a prefix tree (depth log2(n)) instead of a chain (depth n).
TREE_MIN_BLOCKS = 64

_SCALARS = (bool, int, float, complex)


def lazy(x, name):
    """`x` as a dask array (array_like is wrapped), a Python number, or None.

    The dtype kind is checked as the in-memory functions check it; chunks of
    unknown size raise ``ValueError`` naming the fix.
    """
    if x is None or type(x) in _SCALARS:
        return x
    if not isinstance(x, da.Array):
        x = da.asarray(as_array(x, name))
    as_array(np.empty(0, dtype=x.dtype), name)
    if any(np.isnan(c) for cs in x.chunks for c in cs):
        raise ValueError(
            f"`{name}` has chunks of unknown size; call "
            f"`{name}.compute_chunk_sizes()` first"
        )
    return x


def meta_of(x):
    """What :func:`zilla_muf._validation.result_dtype` needs of an operand."""
    if x is None or type(x) in _SCALARS:
        return x
    return np.empty((), dtype=x.dtype)


def single_block(x, axes, name, what):
    """Raise ``ValueError`` naming the ``rechunk`` if `x` splits any of `axes`."""
    split = [ax for ax in axes if len(x.chunks[ax]) > 1]
    if split:
        spec = ", ".join(f"{ax}: -1" for ax in axes)
        raise ValueError(
            f"`{name}` must not be split along {what} (axis "
            f"{', '.join(map(str, split))}, chunks "
            f"{[x.chunks[ax] for ax in split]}); use "
            f"`{name}.rechunk({{{spec}}})`"
        )


def block_grid(x):
    """The blocks of dask array `x` as an object ndarray of Delayed."""
    return x.to_delayed(optimize_graph=False)


def block_shape(chunks, index):
    """The shape of block `index` of an array with `chunks`."""
    return tuple(c[i] for c, i in zip(chunks, index))


def assemble(tasks, chunks, dtype):
    """One dask array from an object ndarray of Delayed blocks.

    ``tasks[index]`` computes the block at `index` of an array with `chunks`.
    """
    dtype = np.dtype(dtype)
    ndim = len(chunks)
    meta = np.empty((0,) * ndim, dtype=dtype)
    if ndim == 0:
        return da.from_delayed(tasks[()], (), dtype=dtype, meta=meta)
    parts = np.empty(tasks.shape, dtype=object)
    for index in np.ndindex(tasks.shape):
        parts[index] = da.from_delayed(tasks[index], block_shape(chunks, index),
                                       dtype=dtype, meta=meta)
    return da.block(parts.tolist())


# --------------------------------------------------------------------------
# The affine carry of the scans
# --------------------------------------------------------------------------


def _cast(x, dtype):
    return np.asarray(x, dtype=dtype)


def _apply(pair, state, dtype):
    """``P state + E`` in the result dtype: the state after a summarised block."""
    P, E = pair
    if state is None:
        return _cast(E, dtype)
    return _cast(P * state + E, dtype)


def _compose(first, second, dtype):
    """The summary of `first` followed by `second`: (P2 P1, P2 E1 + E2)."""
    P1, E1 = first
    P2, E2 = second
    return _cast(P2 * P1, dtype), _cast(P2 * E1 + E2, dtype)


def affine_carry(summaries, start, dtype, tree_min=None):
    """The states entering blocks 1..n-1 in scan order.

    Parameters
    ----------
    summaries : list of Delayed
        ``summaries[i]`` is the pair (P, E) of block ``i + 1``; the last
        block's summary is not needed and may be omitted.
    start : Delayed
        The state leaving block 0 (it enters block 1).
    dtype : numpy.dtype
        The result dtype; every carried state is cast to it.

    Returns
    -------
    list of Delayed
        ``states[i]`` enters block ``i + 1``.
    """
    tree_min = TREE_MIN_BLOCKS if tree_min is None else tree_min
    apply = delayed(functools.partial(_apply, dtype=dtype), pure=True)
    states = [start]
    if len(summaries) + 2 < tree_min:
        for pair in summaries:
            states.append(apply(pair, states[-1]))
        return states
    # Hillis-Steele inclusive prefix of the summaries: after the pass with
    # stride d, prefix[i] composes summaries i-2d+1 .. i.
    compose = delayed(functools.partial(_compose, dtype=dtype), pure=True)
    prefix = list(summaries)
    stride = 1
    while stride < len(prefix):
        prefix = [prefix[i] if i < stride else compose(prefix[i - stride], prefix[i])
                  for i in range(len(prefix))]
        stride *= 2
    states.extend(apply(p, start) for p in prefix)
    return states


# --------------------------------------------------------------------------
# The state chain of the SSD and the selective scan
# --------------------------------------------------------------------------


def state_chain(run, nblocks, start):
    """Run ``run(k, state) -> (out, final)`` over blocks 0..n-1 in order.

    `run` returns a pair of Delayed; the final state of block ``k`` enters
    block ``k + 1``. Returns the list of Delayed outputs and the last final
    state.
    """
    outs = []
    state = start
    for k in range(nblocks):
        out, state = run(k, state)
        outs.append(out)
    return outs, state
