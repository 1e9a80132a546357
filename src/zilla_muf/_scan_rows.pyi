import numpy as np
import numpy.typing as npt

from ._scan_plan import ScanPlan

def scan(
    plan: ScanPlan, a: npt.NDArray[np.inexact], b: npt.NDArray[np.inexact],
    out: npt.NDArray[np.inexact], h0: npt.NDArray[np.inexact] | None = None,
    reverse: bool = False,
) -> None: ...
