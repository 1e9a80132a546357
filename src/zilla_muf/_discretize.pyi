import numpy as np
import numpy.typing as npt

def zoh_real(
    a: npt.NDArray[np.floating], delta: npt.NDArray[np.floating],
    b: npt.NDArray[np.floating], abar: npt.NDArray[np.floating],
    bbar: npt.NDArray[np.floating], bw: int, num_threads: int,
) -> None: ...
def zoh_complex(
    a: npt.NDArray[np.floating], delta: npt.NDArray[np.floating],
    b: npt.NDArray[np.floating], abar: npt.NDArray[np.floating],
    bbar: npt.NDArray[np.floating], num_threads: int,
) -> None: ...
def bilinear_real(
    a: npt.NDArray[np.floating], delta: npt.NDArray[np.floating],
    b: npt.NDArray[np.floating], alpha: float, abar: npt.NDArray[np.floating],
    bbar: npt.NDArray[np.floating], bw: int, num_threads: int,
) -> None: ...
def bilinear_complex(
    a: npt.NDArray[np.floating], delta: npt.NDArray[np.floating],
    b: npt.NDArray[np.floating], alpha: float, abar: npt.NDArray[np.floating],
    bbar: npt.NDArray[np.floating], num_threads: int,
) -> None: ...
