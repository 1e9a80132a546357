import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]
_I = npt.NDArray[np.int64]

def combined(
    x: _F, dt: _F, dA: _F, B: _F, C: _F, seq: _I, has_seq: bool,
    state: _F, has_init: bool, y: _F, chunk_size: int, num_threads: int,
) -> int: ...
def chunk_states(
    x: _F, B: _F, dt: _F, dA: _F, seq: _I, has_seq: bool, states: _F,
    chunk_size: int, num_threads: int,
) -> int: ...
def state_passing(
    states: _F, dA: _F, seq: _I, has_seq: bool, L: int, init: _F, out: _F,
    final: _F, chunk_size: int, num_threads: int,
) -> None: ...
def chunk_scan(
    x: _F, dt: _F, dA: _F, B: _F, C: _F, chunk_states: _F, seq: _I,
    has_seq: bool, y: _F, chunk_size: int, num_threads: int,
) -> int: ...
def sequential(
    x: _F, dt: _F, A: _F, B: _F, C: _F, seq: _I, has_seq: bool, state: _F,
    y: _F, num_threads: int,
) -> None: ...
