"""Decomposed Prompt Tuning (DePT, and its successor ADePT) for any Hugging Face transformers model.

The method is `dept.core`; the runs, tasks, server, benchmarks and command line are built on it. The
top-level names load lazily, so `import dept.tasks` does not pay for torch and transformers.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dept")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

_EXPORTS = {
    "DePTConfig": "dept.core.config",
    "DePTModel": "dept.core.model",
    "load_backbone": "dept.backbones",
    "convert_official": "dept.core.checkpoint",
    "export_peft": "dept.core.checkpoint",
    "export_prompt_embeds": "dept.core.export",
    "create_optimizer": "dept.core.optim",
    "create_scheduler": "dept.core.optim",
    "default_rates": "dept.core.rates",
    "embedding_rms": "dept.core.rates",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    if name == "optim":
        return import_module("dept.core.optim")
    raise AttributeError(f"module 'dept' has no attribute {name!r}")
