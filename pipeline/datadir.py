"""Where the public data sets live.

The data sets are never copied into the project (licences, size); code reads them in place
from a data directory: an explicit path, else ``$HEARKEN_DATA_DIR``, else ``../shared/datasets``
next to the checkout. A missing directory is an error that says how to point at it.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import DataError

DATA_DIR_ENV = "HEARKEN_DATA_DIR"
_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


def resolve_data_dir(explicit: Path | str | None = None) -> Path:
    """Return the data directory, checking that it exists and looks like the shared data sets."""
    if explicit is not None:
        candidate = Path(explicit)
    elif os.environ.get(DATA_DIR_ENV):
        candidate = Path(os.environ[DATA_DIR_ENV])
    else:
        candidate = _CHECKOUT_ROOT.parent / "shared" / "datasets"
    candidate = candidate.expanduser().resolve()
    if not (candidate / "INDEX.md").is_file():
        raise DataError(
            f"No data directory at {candidate} (expected the shared data sets with an INDEX.md).",
            fix=f"pass --data-dir PATH or set {DATA_DIR_ENV}=/path/to/shared/datasets",
        )
    return candidate


def dataset_file(relative: str, data_dir: Path | str | None = None) -> Path:
    """Return one file of a data set, failing with a clear message if it is missing."""
    path = resolve_data_dir(data_dir) / relative
    if not path.is_file():
        raise DataError(
            f"Data file {path} is missing.",
            fix="check that the data directory is the complete shared/datasets folder",
        )
    return path
