"""Where the shared example material is (the demo's video and speech, the benchmarks' clips).

One home for the place: `$AVATAR_EXAMPLES` when set; otherwise `shared/data` beside the source checkout the
package runs from, or beside the working directory (`../shared/data`) for an installed package.
"""

from __future__ import annotations

import os
from pathlib import Path

ENVIRONMENT_VARIABLE = "AVATAR_EXAMPLES"


def example_data() -> Path:
    """The folder of shared example material (it may not exist: callers say what is missing)."""
    if os.environ.get(ENVIRONMENT_VARIABLE):
        return Path(os.environ[ENVIRONMENT_VARIABLE])
    checkout = Path(__file__).resolve().parents[1]
    candidates = [checkout.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return next(
        (path for path in candidates if path.is_dir()),
        candidates[0] if (checkout / "pyproject.toml").is_file() else candidates[1],
    )
