"""Decomposed Prompt Tuning (DePT) for any Hugging Face transformers model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dept")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

from dept.config import DePTConfig  # noqa: E402
from dept.model import DePTModel  # noqa: E402
from dept.backbones import load_backbone  # noqa: E402
from dept.checkpoint import convert_official  # noqa: E402

__all__ = ["DePTConfig", "DePTModel", "load_backbone", "convert_official", "__version__"]
