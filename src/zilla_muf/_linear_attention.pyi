import numpy as np
import numpy.typing as npt

def channel_gate_scores(
    q: npt.NDArray[np.floating], k: npt.NDArray[np.floating],
    gc: npt.NDArray[np.floating], out: npt.NDArray[np.floating], num_threads: int,
) -> int: ...
def unit_lower_solve(
    M: npt.NDArray[np.floating], X: npt.NDArray[np.floating], num_threads: int,
) -> None: ...
def kernel_build() -> str: ...
def set_kernel_build(name: str | None) -> str: ...
def chunk_forward(
    q: npt.NDArray[np.floating], k: npt.NDArray[np.floating],
    v: npt.NDArray[np.floating], o: npt.NDArray[np.floating],
    g: npt.NDArray[np.floating] | None, beta: npt.NDArray[np.floating] | None,
    h0: npt.NDArray[np.floating] | None, hT: npt.NDArray[np.floating],
    seq_batch: npt.NDArray[np.intp], seq_start: npt.NDArray[np.intp],
    seq_stop: npt.NDArray[np.intp], scale: float, chunk: int, num_threads: int,
) -> None: ...
