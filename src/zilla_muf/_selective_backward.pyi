import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]
_I = npt.NDArray[np.intp]

def selective_scan_real_forward(
    u: _F, delta: _F, A: _F, B: _F, b_layout: _I, C: _F, c_layout: _I,
    h0: _F, y: _F, ck: _F, segment: int, num_threads: int, *,
    D: _F | None = ..., delta_bias: _F | None = ...,
    delta_softplus: bool = ..., z: _F | None = ..., y0: _F | None = ...,
) -> None: ...
def selective_scan_real_backward(
    u: _F, delta: _F, A: _F, B: _F, b_layout: _I, C: _F, c_layout: _I,
    ck: _F, gy: _F, glast: _F, gu: _F, gdelta: _F, gA: _F, gh0: _F,
    sums: _F, gB: _F, gC: _F, segment: int, num_threads: int, *,
    D: _F | None = ..., delta_bias: _F | None = ...,
    delta_softplus: bool = ..., z: _F | None = ..., y0: _F | None = ...,
    gz: _F | None = ...,
) -> None: ...
def selective_scan_complex_backward(
    u: _F, delta: _F, A_re: _F, A_im: _F, B_re: _F, B_im: _F, b_layout: _I,
    C_re: _F, C_im: _F, c_layout: _I, h0_re: _F, h0_im: _F, gy: _F,
    glast_re: _F, glast_im: _F, gu: _F, gdelta: _F, gA_re: _F, gA_im: _F,
    gh0_re: _F, gh0_im: _F, sums: _F, gB_re: _F, gB_im: _F, gC_re: _F,
    gC_im: _F, segment: int, num_threads: int, *, D: _F | None = ...,
    delta_bias: _F | None = ..., delta_softplus: bool = ...,
    z: _F | None = ..., y0: _F | None = ..., gz: _F | None = ...,
) -> None: ...
