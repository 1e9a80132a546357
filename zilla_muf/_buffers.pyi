from typing import Any

import numpy as np

MIN_BYTES: int
SLOTS: int

def empty(shape: Any, dtype: Any) -> np.ndarray: ...
def set_limit(limit: int) -> None: ...
def stats() -> dict[str, int]: ...
