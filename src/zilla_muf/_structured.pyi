import numpy as np
import numpy.typing as npt

def toeplitz_direct(
    kernel: npt.NDArray[np.floating], kmap: npt.NDArray[np.intp],
    x: npt.NDArray[np.floating], xmap: npt.NDArray[np.intp],
    out: npt.NDArray[np.floating], tile: int, num_threads: int,
    cplx: bool = ...,
) -> None: ...
def cauchy(
    nodes: npt.NDArray[np.floating], nmap: npt.NDArray[np.intp],
    poles: npt.NDArray[np.floating], weights: npt.NDArray[np.floating],
    out: npt.NDArray[np.floating], conj_pairs: bool, num_threads: int,
) -> None: ...
def vandermonde(
    poles: npt.NDArray[np.floating], weights: npt.NDArray[np.floating],
    out: npt.NDArray[np.floating], conj_pairs: bool, split: int,
    num_threads: int,
) -> None: ...
def vandermonde_transpose(
    poles: npt.NDArray[np.floating], v: npt.NDArray[np.floating],
    vmap: npt.NDArray[np.intp], out: npt.NDArray[np.floating], split: int,
    num_threads: int,
) -> None: ...
def semiseparable(
    a: npt.NDArray[np.floating], amap: npt.NDArray[np.intp],
    B: npt.NDArray[np.floating], bmap: npt.NDArray[np.intp],
    C: npt.NDArray[np.floating], cmap: npt.NDArray[np.intp],
    x: npt.NDArray[np.floating], xmap: npt.NDArray[np.intp],
    out: npt.NDArray[np.floating], r: int, chunk_size: int, num_threads: int,
) -> None: ...
