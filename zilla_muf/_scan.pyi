import numpy as np
import numpy.typing as npt

def sequential(
    a: npt.NDArray[np.inexact], b: npt.NDArray[np.inexact],
    h0: npt.NDArray[np.inexact], out: npt.NDArray[np.inexact], reverse: bool,
) -> None: ...
def chunked(
    a: npt.NDArray[np.inexact], b: npt.NDArray[np.inexact],
    h0: npt.NDArray[np.inexact], out: npt.NDArray[np.inexact], reverse: bool,
    chunk_size: int, block_width: int, num_threads: int,
) -> None: ...
def associative(
    a: npt.NDArray[np.inexact], b: npt.NDArray[np.inexact],
    h0: npt.NDArray[np.inexact], out: npt.NDArray[np.inexact], reverse: bool,
    leaf_size: int, block_width: int, num_threads: int,
) -> None: ...
