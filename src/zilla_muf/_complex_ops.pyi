import numpy as np
import numpy.typing as npt

def exp_scaled(
    z: npt.NDArray[np.floating], delta: npt.NDArray[np.floating],
    out: npt.NDArray[np.floating], num_threads: int,
) -> None: ...
def conj_pair_rows(
    c: npt.NDArray[np.floating], h: npt.NDArray[np.floating],
    out: npt.NDArray[np.floating], num_threads: int,
) -> None: ...
