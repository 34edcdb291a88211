"""Task registry: GLUE / SuperGLUE / custom tasks as text-to-text examples, split rules, metrics.

No model or tokenizer dependency::

    from dept.tasks import get_task, list_tasks
    task = get_task("glue/rte")
    splits = task.load(data_dir=None, split_rule="paper", seed=42)  # {"train", "validation", "test"}
    task.metrics(predictions, splits["test"])                       # {task.main_metric: ..., ...}

Modules: ``registry`` (Example, Task, get_task), ``sources`` (local files, STS-B package, hub),
``glue`` / ``superglue`` (task definitions), ``custom`` (csv/tsv/jsonl tasks), ``templates``
(text formatting), ``splits`` (paper/official rules), ``metrics``, ``fewshot`` (k_shot).
"""

from dept.tasks import glue as _glue  # noqa: F401  (registers the GLUE tasks)
from dept.tasks import superglue as _superglue  # noqa: F401  (registers the SuperGLUE tasks)
from dept.tasks.fewshot import k_shot
from dept.tasks.registry import Example, Task, get_task, list_tasks, register_task
from dept.tasks.sources import ENV_DATA_DIR, DataNotFoundError
from dept.tasks.templates import stsb_target

__all__ = [
    "Example",
    "Task",
    "get_task",
    "list_tasks",
    "register_task",
    "k_shot",
    "stsb_target",
    "DataNotFoundError",
    "ENV_DATA_DIR",
]
