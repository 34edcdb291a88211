"""Per-adapter task heads of a classifier backbone, without patching it.

A classifier's head modules (those outside its base model: the score or classifier layer) each get a
forward hook; while a DePTModel call runs, the hook hands each row's features to its adapter's own
copy of the head. The backbone's head serves `__base__` rows and every call made outside DePTModel.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Optional

from torch import nn
from transformers import PreTrainedModel

from dept.core.prompt import AdapterGroup


class Heads:
    def __init__(self, model: PreTrainedModel):
        self.templates: dict[str, nn.Module] = {}
        self.groups: Optional[list[AdapterGroup]] = None
        body = {id(p) for p in model.base_model.parameters()}
        for name, module in model.named_children():
            if any(id(p) not in body for p in module.parameters()):
                # Copied before the hook exists, in fp32 whatever the backbone's dtype: a head trains,
                # and its small updates vanish in bf16 weights.
                self.templates[name] = copy.deepcopy(module).float()
                module.register_forward_hook(self._route(name))

    def copies(self) -> dict[str, nn.Module]:
        """A new adapter's heads: fresh copies of the backbone's, as it was when wrapped."""
        return {name: copy.deepcopy(template) for name, template in self.templates.items()}

    @contextlib.contextmanager
    def routing(self, groups: list[AdapterGroup]) -> Iterator[None]:
        self.groups = groups
        try:
            yield
        finally:
            self.groups = None

    def _route(self, name: str):
        def hook(module, args, output):
            if not self.groups:
                return output  # a call on the plain backbone
            routed = output
            for adapter, rows in self.groups:
                if adapter is None:
                    continue
                head = adapter.head[name]
                features = args[0] if rows is None else args[0][rows]
                # The head's own (fp32) dtype in, the backbone's out.
                result = head(features.to(next(head.parameters()).dtype)).to(output.dtype)
                routed = result if rows is None else routed.index_put((rows,), result)
            return routed

        return hook
