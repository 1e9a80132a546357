import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]
_I = npt.NDArray[np.intp]

def selective_scan_real(
    u: _F, delta: _F, A: _F, B: _F, b_layout: _I, C: _F, c_layout: _I,
    h0: _F, y: _F, last_state: _F, num_threads: int, *,
    D: _F | None = ..., delta_bias: _F | None = ...,
    delta_softplus: bool = ..., z: _F | None = ...,
    seq: npt.NDArray[np.int64] | None = ...,
) -> None: ...
def selective_scan_complex(
    u: _F, delta: _F, A_re: _F, A_im: _F, B_re: _F, B_im: _F, b_layout: _I,
    C_re: _F, C_im: _F, c_layout: _I, h0_re: _F, h0_im: _F, y: _F,
    last_re: _F, last_im: _F, num_threads: int, *,
    D: _F | None = ..., delta_bias: _F | None = ...,
    delta_softplus: bool = ..., z: _F | None = ...,
    seq: npt.NDArray[np.int64] | None = ...,
) -> None: ...
def causal_conv1d(
    x: _F, weight: _F, bias: _F, init: _F, out: _F, silu: bool,
    num_threads: int,
) -> None: ...
def causal_conv1d_time_major(
    x: _F, wt: _F, bias: _F, init: _F, out: _F, silu: bool,
    num_threads: int,
) -> None: ...
def causal_conv1d_seq(
    x: _F, seq: npt.NDArray[np.int64], weight: _F, bias: _F, init: _F,
    out: _F, silu: bool, num_threads: int,
) -> None: ...
def conv_update(
    x: _F, state: _F, weight: _F, bias: _F, out: _F, silu: bool, *,
    rows: _I | None = ...,
) -> None: ...
def mamba_step(
    x: _F, dt: _F, A: _F, B: _F, C: _F, D: _F, z: _F, dt_bias: _F,
    softplus: bool, has_D: bool, has_z: bool, state: _F, out: _F,
    num_threads: int,
) -> None: ...
