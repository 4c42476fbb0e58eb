"""Where the real datasets live: `$E2E_TF_DATA_DIR`, else `../shared/data` beside the project."""

import os
import pathlib

DATA_DIR_ENV = "E2E_TF_DATA_DIR"


def shared_data_dir() -> pathlib.Path:
    """Root of the datasets tree (`<dataset>/<owner>__<repo>/...`, as in shared/data).

    `$E2E_TF_DATA_DIR` wins; otherwise the `shared/data` folder next to the
    project checkout, which is where CI lays it out.
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return pathlib.Path(override).expanduser()
    project_root = pathlib.Path(__file__).resolve().parent.parent
    return project_root.parent / "shared" / "data"
