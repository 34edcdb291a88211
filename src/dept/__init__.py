"""Decomposed Prompt Tuning (DePT) for any Hugging Face transformers model.

The top-level names load lazily, so `import dept.tasks` does not pay for torch and transformers.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dept")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

_EXPORTS = {
    "DePTConfig": "dept.config",
    "DePTModel": "dept.model",
    "load_backbone": "dept.backbones",
    "convert_official": "dept.checkpoint",
    "export_peft": "dept.checkpoint",
    "export_prompt_embeds": "dept.export",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    if name == "optim":
        return import_module("dept.optim")
    raise AttributeError(f"module 'dept' has no attribute {name!r}")
