"""torch's notices about its own deprecations, raised around int8 tensors and old pickles.

torch warns on every load of a quantized tensor and every run of an int8 model; no ptool user
can act on that, so the same list is filtered wherever a checkpoint loads or an int8 model
runs. A notice about the user's own code or data is never in it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

UPSTREAM_NOTICES = (
    r".*TypedStorage is deprecated",
    r".*torch\.quantize_per_tensor, torch\.quantize_per_channel",
    r".*quantized tensor creation functions",
    r".*Detected pickle protocol",
    r".*Validating sparse tensor invariants",  # every weights_only load of a sparse tensor
)


def ignore_upstream_notices() -> None:
    """Filter them for the rest of the process (an int8 model warns on every forward)."""
    for message in UPSTREAM_NOTICES:
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")


@contextlib.contextmanager
def quiet_upstream_notices() -> Iterator[None]:
    """Filter them inside the block only."""
    with warnings.catch_warnings():
        ignore_upstream_notices()
        yield
