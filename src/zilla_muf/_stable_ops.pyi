import numpy as np
import numpy.typing as npt

def rows(
    op: int, x: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
    num_threads: int,
) -> None: ...
def log_sum_exp(
    x: npt.NDArray[np.floating], out: npt.NDArray[np.floating], num_threads: int,
) -> None: ...
def segsum(
    x: npt.NDArray[np.floating], out: npt.NDArray[np.floating], num_threads: int,
) -> None: ...
def elementwise(
    op: int, x: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
    beta: float, threshold: float, num_threads: int,
) -> None: ...
def rms_norm(
    x: npt.NDArray[np.floating], z: npt.NDArray[np.floating],
    weight: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
    group: int, eps: float, gated: bool, norm_before_gate: bool,
    num_threads: int,
) -> None: ...
