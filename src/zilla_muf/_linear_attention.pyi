import numpy as np
import numpy.typing as npt

def channel_gate_scores(
    q: npt.NDArray[np.floating], k: npt.NDArray[np.floating],
    gc: npt.NDArray[np.floating], out: npt.NDArray[np.floating], num_threads: int,
) -> int: ...
def unit_lower_solve(
    M: npt.NDArray[np.floating], X: npt.NDArray[np.floating], num_threads: int,
) -> None: ...
