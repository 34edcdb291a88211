"""Optional dependencies: `pip install dept` brings only torch, transformers, safetensors and typer;
the rest comes in extras (see pyproject.toml). Imports of an extra's packages sit inside
`with requires("extra"):`, so a missing package fails with the pip command that installs it
instead of a bare ModuleNotFoundError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class MissingExtraError(ImportError):
    """A package of one of dept's optional extras is not installed."""


@contextlib.contextmanager
def requires(extra: str) -> Iterator[None]:
    """Turn a ModuleNotFoundError for a third-party package into one that names the extra."""
    try:
        yield
    except ModuleNotFoundError as err:
        if not err.name or err.name.split(".")[0] == "dept":
            raise
        raise MissingExtraError(
            f"This needs the {err.name.split('.')[0]!r} package, which comes with dept's [{extra}] extra: "
            f'pip install "dept[{extra}]"'
        ) from err
