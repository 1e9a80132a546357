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
  sequentially (``P_k s + E_k``, the whole chain in one tiny task) or, from
  :data:`TREE_MIN_BLOCKS` blocks on, by a Hillis-Steele prefix tree of
  depth ``log2(nblocks)``. Each block is then recomputed by the in-memory
  scan from its incoming state (``h0``), so its output never waits in
  memory for the carry.
- :func:`state_chain` -- the SSD, the selective scan: block ``k`` runs with
  ``initial_states`` = the final states of block ``k - 1``.
- the causal convolution's halo and the block-Toeplitz products are built in
  the wrappers on a :class:`Graph`.
"""

import functools
import operator
import uuid

import numpy as np
import dask.array as da
from dask.highlevelgraph import HighLevelGraph

try:  # the task objects of dask >= 2024.12 (a private module)
    from dask._task_spec import DataNode, Task, convert_legacy_graph
except ImportError:  # pragma: no cover - older dask: keys only, no copies
    DataNode = Task = convert_legacy_graph = None

from .._validation import as_array

__all__ = ["TREE_MIN_BLOCKS", "Blocks", "Graph", "affine_carry", "block_key", "lazy",
           "state_chain"]

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


def block_key(x, index):
    """The graph key of block `index` of dask array `x`."""
    return (x.name,) + tuple(index)


class Blocks:
    """The blocks of a dask array, as arguments of the tasks that use them.

    A block whose task only reads data (a Zarr or HDF5 chunk, a slice of an
    in-memory array, a random or constant block) is inlined: it runs inside
    the task that uses it, so the scheduler never moves it between workers.
    Any other block is referred to by its key.
    """

    def __init__(self, x):
        self.x = x
        self.dsk = ({} if convert_legacy_graph is None
                    else convert_legacy_graph(dict(x.__dask_graph__())))

    def __getitem__(self, index):
        key = (self.x.name,) + tuple(index)
        node = self.dsk.get(key)
        if Task is not None and isinstance(node, Task) and all(
                isinstance(self.dsk.get(dep), DataNode) for dep in node.dependencies):
            return node
        return key


def independent_copies(*arrays):
    """Copies of dask `arrays` whose graphs share no key with the originals.

    A task that reads a copy's block recomputes it (reads the Zarr chunk,
    re-runs the upstream tasks) instead of waiting on the original's block,
    so a block read by two passes is never held in memory between them.
    Persisted blocks (already in memory) stay shared.
    """
    if convert_legacy_graph is None:  # pragma: no cover - older dask
        return list(arrays)
    token = uuid.uuid4().hex[:8]

    def rename(key):
        if isinstance(key, tuple):
            return (f"{key[0]}-copy{token}",) + key[1:]
        return f"{key}-copy{token}"

    merged = {}
    for x in arrays:
        merged.update(x.__dask_graph__())
    dsk = convert_legacy_graph(merged)
    subs = {}
    for key, node in dsk.items():
        # a block that is already data (persisted, or a constant) is shared
        if not isinstance(node, DataNode):
            subs[key] = rename(key)
    layer = {}
    for key, node in dsk.items():
        new_key = subs.get(key)
        if new_key is not None:
            layer[new_key] = node.substitute(subs, key=new_key)
    copies = []
    for x in arrays:
        name = rename(x.name)
        if x.name not in {k[0] if isinstance(k, tuple) else k for k in subs}:
            copies.append(x)  # all of x is data already: nothing to recompute
            continue
        # keys the copy still shares (data) come from the original graph
        graph = HighLevelGraph.from_collections(name, layer, dependencies=[x])
        copies.append(da.Array(graph, name, x.chunks, meta=x._meta))
    return copies


class _Inline:
    __slots__ = ("task",)

    def __init__(self, task):
        self.task = task


class Graph:
    """A low-level task graph over the blocks of some dask arrays.

    Tasks are ``(function, *arguments)`` tuples whose arguments may be keys
    of other tasks or of input blocks; :meth:`array` turns a grid of task
    keys into a dask array. One graph layer per wrapper call: every task a
    block needs runs beside its inputs, without alias or concatenation
    tasks in between.
    """

    def __init__(self, prefix, *inputs):
        self.prefix = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self.inputs = [x for x in inputs if isinstance(x, da.Array)]
        self.dsk = {}
        self.count = 0
        self.layers = []

    def inline(self, func, *args):
        """A task to place directly at an output block of :meth:`array`."""
        return _Inline((func,) + args)

    def task(self, func, *args):
        """Add the task ``func(*args)``; return its key."""
        key = (self.prefix, self.count)
        self.count += 1
        self.dsk[key] = (func,) + args
        return key

    def array(self, name, grid, chunks, dtype, item=None):
        """A dask array whose block ``index`` is the task ``grid[index]``.

        With `item`, the block is element `item` of that task's tuple result.
        """
        dtype = np.dtype(dtype)
        out = f"{name}-{self.prefix.rsplit('-', 1)[1]}"
        layer = {}
        for index in np.ndindex(grid.shape):
            key = grid[index]
            if isinstance(key, _Inline):
                layer[(out,) + index] = key.task
            else:
                layer[(out,) + index] = (key if item is None
                                         else (operator.getitem, key, item))
        if not self.layers:
            layer.update(self.dsk)
            deps = self.inputs
        else:
            deps = self.layers[:1]
        graph = HighLevelGraph.from_collections(out, layer, dependencies=deps)
        arr = da.Array(graph, out, chunks, meta=np.empty((0,) * len(chunks), dtype))
        self.layers.append(arr)
        return arr


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


def _chain(start, *summaries, dtype):
    """The states after every summarised block, in order, from `start`."""
    states = []
    state = start
    for pair in summaries:
        state = _apply(pair, state, dtype)
        states.append(state)
    return states


def _compose(first, second, dtype):
    """The summary of `first` followed by `second`: (P2 P1, P2 E1 + E2)."""
    P1, E1 = first
    P2, E2 = second
    return _cast(P2 * P1, dtype), _cast(P2 * E1 + E2, dtype)


def affine_carry(graph, summaries, start, dtype, tree_min=None):
    """Add the tasks of the states entering blocks 1..n-1 in scan order.

    Parameters
    ----------
    graph : Graph
        Where the tasks go.
    summaries : list of keys
        ``summaries[i]`` is the pair (P, E) of block ``i + 1``; the last
        block's summary is not needed and is omitted.
    start : key
        The state leaving block 0 (it enters block 1).
    dtype : numpy.dtype
        The result dtype; every carried state is cast to it.

    Returns
    -------
    list of keys
        ``states[i]`` enters block ``i + 1``.
    """
    tree_min = TREE_MIN_BLOCKS if tree_min is None else tree_min
    apply = functools.partial(_apply, dtype=dtype)
    if len(summaries) + 2 < tree_min:
        # one task runs the whole chain (a few multiply-adds per block on
        # states of the size of a block's cross-section), instead of a chain
        # of one tiny task per block, each a scheduler round trip
        chain = graph.task(functools.partial(_chain, dtype=dtype), start,
                           *summaries)
        return [start] + [(operator.getitem, chain, i)
                          for i in range(len(summaries))]
    states = [start]
    # Hillis-Steele inclusive prefix of the summaries: after the pass with
    # stride d, prefix[i] composes summaries i-2d+1 .. i.
    compose = functools.partial(_compose, dtype=dtype)
    prefix = list(summaries)
    stride = 1
    while stride < len(prefix):
        prefix = [prefix[i] if i < stride
                  else graph.task(compose, prefix[i - stride], prefix[i])
                  for i in range(len(prefix))]
        stride *= 2
    states.extend(graph.task(apply, p, start) for p in prefix)
    return states


# --------------------------------------------------------------------------
# The state chain of the SSD and the selective scan
# --------------------------------------------------------------------------


def state_chain(run, nblocks, start):
    """Run ``run(k, state) -> key`` over blocks 0..n-1 in order.

    The task ``run`` adds returns a pair (output, final state); the final
    state of block ``k`` (element 1 of its result) enters block ``k + 1``.
    Returns the list of result keys; the chain's final state is element 1
    of the last.
    """
    keys = []
    state = start
    for k in range(nblocks):
        key = run(k, state)
        keys.append(key)
        state = (operator.getitem, key, 1)
    return keys
