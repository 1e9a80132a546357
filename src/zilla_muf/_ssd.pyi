import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]
_I = npt.NDArray[np.int64]

class Scratch:
    def __init__(self, nthreads: int, per_thread: int, itemsize: int) -> None: ...
    def count(self) -> int: ...

def combined(
    x: _F, dt: _F, dA: _F, B: _F, C: _F, y: _F, last: _F, chunk_size: int,
    num_threads: int, *, seq: _I | None = ..., init: _F | None = ...,
    init_per_seq: bool = ..., ends: _F | None = ..., D: _F | None = ...,
    z: _F | None = ..., share_cb: bool = ...,
) -> int: ...
def process_dt(
    dt: _F, lo: float, hi: float, chunk_size: int, dt_out: _F,
    num_threads: int, *, bias: _F | None = ..., dt_softplus: bool = ...,
    A: _F | None = ..., dA: _F | None = ..., seq: _I | None = ...,
) -> None: ...
def chunk_state(
    x: _F, dt: _F, dA: _F, B: _F, states: _F, chunk_size: int,
    num_threads: int, *, seq: _I | None = ...,
) -> int: ...
def chunk_scan(
    x: _F, dt: _F, dA: _F, B: _F, C: _F, states: _F, y: _F, chunk_size: int,
    num_threads: int, *, seq: _I | None = ...,
) -> int: ...
def state_passing(
    states: _F, dA: _F, L: int, init: _F, out: _F, final: _F,
    chunk_size: int, num_threads: int, *, seq: _I | None = ...,
) -> None: ...
def sequential(
    x: _F, dt: _F, A: _F, B: _F, C: _F, state: _F, y: _F, num_threads: int,
    *, seq: _I | None = ...,
) -> None: ...
def decode(
    x: _F, dt: _F, A: _F, B: _F, C: _F, state: _F, y: _F, num_threads: int,
    *, rows: npt.NDArray[np.intp] | None = ..., inter: _F | None = ...,
    D: _F | None = ..., z: _F | None = ...,
) -> None: ...
def mixer_step(
    zxbcdt: _F, conv_state: _F, conv_w: _F, conv_b: _F, dt_bias: _F, A: _F,
    D: _F | None, norm_w: _F, state: _F, out: _F, ngroups: int, eps: float,
    lo: float, hi: float,
) -> None: ...
