import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]
_I = npt.NDArray[np.int64]

def padded(n: int, single: bool) -> int: ...
def forward(
    x: _F, dt: _F, dA: _F, B: _F, C: _F, y0: _F | None, y: _F | None,
    last: _F, states: _F, chunk_size: int, num_threads: int, *,
    seq: _I | None = ..., init: _F | None = ..., D: _F | None = ...,
    z: _F | None = ...,
) -> None: ...
def backward(
    x: _F, dt: _F, dA: _F, A: _F, B: _F, C: _F, gy: _F, states: _F,
    gx: _F, gB: _F, gC: _F, ddt: _F, gA: _F, chunk_size: int,
    num_threads: int, *, seq: _I | None = ..., has_init: bool = ...,
    gfinal: _F | None = ..., ginit: _F | None = ..., D: _F | None = ...,
    gD: _F | None = ..., z: _F | None = ..., y0: _F | None = ...,
    gz: _F | None = ..., block_bytes: int = ..., dt_raw: _F | None = ...,
    dt_bias: _F | None = ..., dt_softplus: bool = ..., lo: float = ...,
    hi: float = ..., gdt_bias: _F | None = ...,
) -> None: ...
