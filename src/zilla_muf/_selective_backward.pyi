import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]
_I = npt.NDArray[np.intp]

def selective_scan_real_backward(
    u: _F, dl: _F, A: _F, B: _F, b_layout: _I, C: _F, c_layout: _I, gy: _F,
    h0: _F, glast: _F, gu: _F, gdl: _F, gA: _F, gh0: _F, gB: _F, gC: _F,
    segment: int, num_threads: int,
) -> None: ...
