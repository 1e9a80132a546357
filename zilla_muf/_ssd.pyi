import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]
_I = npt.NDArray[np.int64]

class Scratch:
    def __init__(self, nthreads: int, per_thread: int, itemsize: int) -> None: ...
    def count(self) -> int: ...

def combined(
    x: _F, dt: _F, dA: _F, B: _F, C: _F, seq: _I, has_seq: bool,
    state: _F, has_init: bool, D: _F, has_D: bool, z: _F, has_z: bool,
    y: _F, chunk_size: int, num_threads: int, share_cb: bool = ...,
) -> int: ...
def process_dt(
    dt: _F, bias: _F, has_bias: bool, dt_softplus: bool, lo: float, hi: float,
    A: _F, has_A: bool, chunk_size: int, dt_out: _F, dA: _F, num_threads: int,
) -> None: ...
def chunk_stage(
    x: _F, dt: _F, dA: _F, B: _F, C: _F, states: _F, seq: _I, has_seq: bool,
    y: _F, scan: bool, chunk_size: int, num_threads: int,
) -> int: ...
def state_passing(
    states: _F, dA: _F, seq: _I, has_seq: bool, L: int, init: _F, out: _F,
    final: _F, chunk_size: int, num_threads: int,
) -> None: ...
def sequential(
    x: _F, dt: _F, A: _F, B: _F, C: _F, seq: _I, has_seq: bool, state: _F,
    y: _F, num_threads: int,
) -> None: ...
