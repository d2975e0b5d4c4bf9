"""The original MNIST and Fashion-MNIST files, read where ``$MINISD_DATA`` points (``make test`` and CI set it to
../shared/data). A test that needs them is marked ``needs_real_data``: without them it is skipped and says why,
instead of trying to download (machines without the internet fail that way)."""

import os
from pathlib import Path

import pytest

REAL_DATA_DIR = Path(os.environ["MINISD_DATA"]).resolve() if os.environ.get("MINISD_DATA") else None

needs_real_data = pytest.mark.skipif(
    REAL_DATA_DIR is None or not all((REAL_DATA_DIR / name).is_dir() for name in ("mnist", "fashion-mnist")),
    reason="set MINISD_DATA to a folder holding mnist/ and fashion-mnist/ IDX .gz files",
)
