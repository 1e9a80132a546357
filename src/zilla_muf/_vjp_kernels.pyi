import numpy as np
import numpy.typing as npt

def cauchy_backward(
    z: npt.NDArray[np.float64], p: npt.NDArray[np.float64],
    w: npt.NDArray[np.float64], c: npt.NDArray[np.float64], pairs: bool,
    gz: npt.NDArray[np.float64], gw: npt.NDArray[np.float64],
    sp: npt.NDArray[np.float64], num_threads: int,
) -> None: ...

def segsum_backward(
    c: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    g: npt.NDArray[np.float32] | npt.NDArray[np.float64], num_threads: int,
) -> None: ...

def semiseparable_backward(
    a: npt.NDArray[np.floating], B: npt.NDArray[np.floating],
    C: npt.NDArray[np.floating], x: npt.NDArray[np.floating],
    c: npt.NDArray[np.floating], ga: npt.NDArray[np.floating],
    gB: npt.NDArray[np.floating], gC: npt.NDArray[np.floating],
    gx: npt.NDArray[np.floating], work: npt.NDArray[np.floating],
    num_threads: int,
) -> None: ...

def diag_discretize_backward(
    zoh: int, alpha: float, lam: npt.NDArray[np.float64],
    B: npt.NDArray[np.float64], d: npt.NDArray[np.float64],
    cA: npt.NDArray[np.float64], cB: npt.NDArray[np.float64],
    gA: npt.NDArray[np.float64], gB: npt.NDArray[np.float64],
    gd: npt.NDArray[np.float64], num_threads: int,
) -> None: ...

def silu_backward(
    x: npt.NDArray[np.floating], c: npt.NDArray[np.floating],
    g: npt.NDArray[np.floating], num_threads: int,
) -> None: ...

def scan_backward(
    a: npt.NDArray[np.floating], h: npt.NDArray[np.floating],
    c: npt.NDArray[np.floating], cf: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating], has_cf: bool, has_h0: bool,
    ga: npt.NDArray[np.floating], gb: npt.NDArray[np.floating],
    gh0: npt.NDArray[np.floating], num_threads: int,
) -> None: ...

def vandermonde_backward(
    poles: npt.NDArray[np.float64], v: npt.NDArray[np.float64], real_v: bool,
    s0: npt.NDArray[np.float64], s1: npt.NDArray[np.float64], num_threads: int,
) -> None: ...

def scan_backward_rows(
    a: npt.NDArray[np.floating], h: npt.NDArray[np.floating],
    c: npt.NDArray[np.floating], cf: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating], has_cf: bool, has_h0: bool, rev: bool,
    ga: npt.NDArray[np.floating], gb: npt.NDArray[np.floating],
    gh0: npt.NDArray[np.floating], num_threads: int,
) -> None: ...

def cscan_backward_rows(
    a: npt.NDArray[np.floating], h: npt.NDArray[np.floating],
    c: npt.NDArray[np.floating], cf: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating], has_cf: bool, has_h0: bool, rev: bool,
    ga: npt.NDArray[np.floating], gb: npt.NDArray[np.floating],
    gh0: npt.NDArray[np.floating], num_threads: int, stream: bool = ...,
) -> None: ...

def log_softmax_backward(
    y: npt.NDArray[np.floating], c: npt.NDArray[np.floating],
    g: npt.NDArray[np.floating], num_threads: int,
) -> None: ...

def causal_conv1d_backward(
    g: npt.NDArray[np.floating], pre: npt.NDArray[np.floating], silu: bool,
    x: npt.NDArray[np.floating],
    h0: npt.NDArray[np.floating], w: npt.NDArray[np.floating],
    gf: npt.NDArray[np.floating], has_h0: bool, has_gf: bool,
    gx: npt.NDArray[np.floating], gw: npt.NDArray[np.floating],
    gb: npt.NDArray[np.floating], gh0: npt.NDArray[np.floating],
    num_threads: int,
) -> None: ...

def causal_conv1d_backward_time_major(
    g: npt.NDArray[np.floating], pre: npt.NDArray[np.floating], silu: bool,
    x: npt.NDArray[np.floating], wt: npt.NDArray[np.floating],
    gx: npt.NDArray[np.floating], gwt: npt.NDArray[np.floating],
    gb: npt.NDArray[np.floating], num_threads: int,
) -> None: ...

def rms_norm_backward(
    x: npt.NDArray[np.floating], z: npt.NDArray[np.floating],
    w: npt.NDArray[np.floating], dy: npt.NDArray[np.floating],
    group: int, eps: float, mode: int, want_gw: bool, block: int,
    gx: npt.NDArray[np.floating], gz: npt.NDArray[np.floating],
    gwp: npt.NDArray[np.float64], num_threads: int,
) -> None: ...
