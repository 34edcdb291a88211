"""lm-evaluation-harness model `dept`: a backbone with a trained DePT / PT / ADePT adapter (or none).

    lm = DePTLM(pretrained="smollm2-135m", adapter="runs/glue-sst2/dept")  # model_args of `--model dept`
    lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"])

The harness's own HFLM would run the plain backbone; this model scores exactly as dept does
(`dept.scoring`): the context is the source, so the low-rank offsets go to its tokens only and
never to the continuation, as in training where the target gets none. `python -m dept.lm_eval`
is the harness's command line with this model registered. `write_task` turns a dept task into a
local harness task (YAML + JSONL) so the harness can score it offline (`--include_path`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from dept._extras import requires
from dept.core.model import DePTModel
from dept.data import encode, encode_ids, pad_batch, pad_id
from dept.errors import UsageError
from dept.scoring import ScoreRow, score_rows

with requires("hf"):
    import lm_eval.models  # noqa: F401  (get_model() imports the harness's own models only into an empty registry)
    from lm_eval import utils as harness_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model

logger = logging.getLogger(__name__)

__all__ = ["DePTLM", "write_task"]

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_LENGTH = 2048  # a plain backbone's context when model_args give no max_length
MODEL_ARGS = ("pretrained", "adapter", "adapter_name", "max_length", "dtype", "batch_size", "max_batch_size", "device")


def load_model(pretrained: Optional[str], adapter: Optional[str], adapter_name: str, dtype: str):
    """(model, tokenizer, the adapter's max_length or None). An adapter folder or a run folder is
    resolved as `dept eval` does (`Trained`: its best/, its backbone from run.json)."""
    from dept.backbones import load_backbone
    from dept.methods import PromptMethod
    from dept.runs.trained import Trained

    if adapter is None:
        if pretrained is None:
            raise UsageError("model_args need pretrained=BACKBONE (a plain backbone) and/or adapter=RUN_OR_ADAPTER.")
        model, tokenizer = load_backbone(str(pretrained), dtype=dtype)
        return model, tokenizer, None
    path = Path(str(adapter)).expanduser()
    if not path.is_dir():
        raise UsageError(f"adapter={adapter} is not a folder; give an adapter folder (RUN/best) or a run folder.")
    trained = Trained(path, None if pretrained is None else str(pretrained))
    if isinstance(trained.method, PromptMethod):
        model, tokenizer = load_backbone(trained.backbone, dtype=dtype)
        model = DePTModel.from_pretrained(model, trained.adapter, adapter_name, tokenizer=tokenizer)
    else:  # a LoRA adapter or a fully fine-tuned model, saved by `dept train`
        model, tokenizer = trained.load()
        model = model.to(dtype=_dtype(dtype))
    length = trained.setting("max_length", "max_length", None, trained.max_length)
    return model, tokenizer, length


def _dtype(name: str) -> torch.dtype:
    from dept.backbones import _resolve_dtype

    return _resolve_dtype(name)


def _context_size(model) -> int:
    """A plain backbone's context: its position table's size, at most DEFAULT_MAX_LENGTH (T5's
    relative positions have no table)."""
    config = getattr(model, "base_model", model).config
    config = getattr(config, "get_text_config", lambda **_: config)()
    size = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(int(size), DEFAULT_MAX_LENGTH) if size else DEFAULT_MAX_LENGTH


def _batch_size(value) -> int:
    text = str(value)
    if text.startswith("auto"):
        logger.warning("batch_size=%s: the dept model has no automatic batch size; using %d.", text, DEFAULT_BATCH_SIZE)
        return DEFAULT_BATCH_SIZE
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"batch_size must be a whole number of at least 1; got {value!r}.")
    return int(text)


def _device(name: Optional[str]) -> torch.device:
    """The harness's command line asks for cuda:0 by default, also where there is none (HFLM then
    picks the CPU; so does this)."""
    if name is None or (str(name).startswith("cuda") and not torch.cuda.is_available()):
        if name is not None:
            logger.warning("device=%s: no CUDA here; running on the CPU.", name)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@register_model("dept")
class DePTLM(TemplateLM):
    """The harness's view of a dept model. Model args: pretrained=BACKBONE (a named offline backbone,
    hub id or folder; default: the run's), adapter=RUN_OR_ADAPTER (none: the plain backbone,
    zero-shot), adapter_name=NAME, max_length=N (default: the run's, else the adapter's s, else the
    backbone's context up to 2048; contexts lose their end beyond it, as dept's sources do),
    dtype=float32|bfloat16|float16; and the harness's batch_size and device."""

    def __init__(
        self,
        pretrained: Optional[str] = None,
        adapter: Optional[str] = None,
        adapter_name: str = "default",
        max_length: Optional[int] = None,
        dtype: str = "float32",
        batch_size=DEFAULT_BATCH_SIZE,
        max_batch_size: Optional[int] = None,
        device: Optional[str] = None,
        **unknown: Any,
    ):
        super().__init__()
        if unknown:
            raise UsageError(
                f"Unknown model_args {sorted(unknown)} for --model dept; it takes {', '.join(MODEL_ARGS)}."
            )
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise UsageError(f"max_length must be a whole number of at least 2; got {max_length!r}.")
        self.batch_size = _batch_size(batch_size)
        try:
            model, tokenizer, saved_length = load_model(pretrained, adapter, str(adapter_name), dtype)
        except UsageError:
            raise
        except (ValueError, OSError, KeyError, ImportError) as err:  # a wrong or missing backbone, a missing file
            raise UsageError(" ".join(str(err).split())) from None  # one line, no traceback
        from dept.runs.trained import model_kind_of

        self.kind = model_kind_of(model)
        if self.kind not in ("causal", "seq2seq"):
            raise UsageError(f"--model dept scores language models; this backbone is a {self.kind} model.")
        self.backend = "causal" if self.kind == "causal" else "seq2seq"
        self._device = _device(device)
        self.model = model.to(self._device).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length or saved_length or _context_size(model)
        self._pad = pad_id(tokenizer)

    # ----- tokens ----------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context (and the first rolling window) conditions on: BOS, else EOS (as HFLM)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> list[int]:
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """dept's encoding: the context as a source (`tokenizer(source)`, special tokens and all),
        the continuation as a target (no special tokens). Trailing context spaces move to the
        continuation, as in the harness; encoder-decoders drop the continuation's leading space
        (their decoder starts from its own start token, and dept's targets carry none)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if self.kind == "seq2seq":
            continuation = continuation.lstrip()
        ctx = self.tokenizer(context)["input_ids"] if context else []
        return ctx or [self.prefix_token_id], self.tok_encode(continuation)

    # ----- scoring ---------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is greedy) per request, as `dept.scoring.rank_scores`
        scores a label: offsets on the context only. Contexts longer than max_length lose their end
        (causal: max_length minus the longest continuation of that context), as dept's sources do."""
        pairs = [self._pair(*req.args) for req in requests]
        longest: dict[tuple, int] = {}
        for ctx, cont in pairs:
            longest[tuple(ctx)] = max(longest.get(tuple(ctx), 0), len(cont))
        items = [(self._fit(ctx, longest[tuple(ctx)]), cont) for ctx, cont in pairs]
        results = self._score_tokens(items)
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def _fit(self, ctx: list[int], answer_length: int) -> list[int]:
        room = max(1, self.max_length - answer_length) if self.kind == "causal" else self.max_length
        return encode_ids(ctx, [], self.kind, room).input_ids

    def _loglikelihood_tokens(self, requests, **kwargs) -> list[tuple[float, bool]]:
        """TemplateLM's token-level entry: ((context, continuation), context ids, continuation ids)."""
        return self._score_tokens([(ctx, cont) for _, ctx, cont in requests])

    @torch.no_grad()
    def _score_tokens(self, items: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """Score (source ids, target ids) pairs with dept.scoring's rows: continuations of one
        context share its source pass (causal: one KV cache), `batch_size` sources at a time."""
        slots: dict[tuple, int] = {}
        rows = []
        for i, (ctx, cont) in enumerate(items):
            if cont:
                example = slots.setdefault(tuple(ctx), len(slots))
                rows.append(ScoreRow(example, list(ctx), tuple(cont[:-1]), [(i, cont[-1])]))
        rows.sort(key=lambda r: (-len(r.source), r.example))  # longest first; one context's rows together
        results: list[tuple[float, bool]] = [(0.0, True)] * len(items)  # an empty continuation: log 1
        for row, lp in score_rows(self.model, rows, self.kind, self._pad, self.batch_size):
            (i, last), p = row.members[0], len(row.prefix)
            score = sum(float(lp[k, t]) for k, t in enumerate(row.prefix)) + float(lp[p, last])
            targets = torch.tensor([*row.prefix, last], device=lp.device)
            results[i] = (score, bool((lp[: p + 1].argmax(-1) == targets).all()))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts in the harness's disjoint windows of max_length tokens.
        Every window predicts its tokens from one context token (the prefix token, then the token
        before the window): only that token is source and carries offsets; the predicted tokens
        never do, as in training, where targets get none."""
        windows, owners = [], []
        for n, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0])
            for window in harness_utils.get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, 1):
                windows.append(harness_utils.make_disjoint_window(window))
                owners.append(n)
        totals = [0.0] * len(requests)
        for n, (score, _) in zip(owners, self._score_tokens(windows)):
            totals[n] += score
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ----- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations (sampling options are ignored), cut at the first `until` string,
        at most `max_gen_toks` tokens. DePTModel.generate offsets the context only (prefill)."""
        out: list[Optional[str]] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        for key, members in groups.items():
            kwargs = json.loads(key)
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            new = int(kwargs.get("max_gen_toks", 256))
            if kwargs.get("do_sample") or (kwargs.get("temperature") or 0) > 0:
                logger.warning("generate_until: the dept model decodes greedily; ignoring %s.", kwargs)
            room = self.max_length - new if self.kind == "causal" else self.max_length
            if room < 1:
                raise UsageError(f"max_gen_toks={new} leaves no room for the context in max_length={self.max_length}.")
            ordered = sorted(members, key=lambda i: -len(requests[i].args[0]))
            for chunk in (ordered[k : k + self.batch_size] for k in range(0, len(ordered), self.batch_size)):
                texts = self._generate([requests[i].args[0] for i in chunk], room, new, until)
                for i, text in zip(chunk, texts):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _generate(self, contexts: list[str], room: int, new: int, until: list[str]) -> list[str]:
        rows = [encode(self.tokenizer, c, None, self.kind, room) for c in contexts]
        batch = pad_batch(rows, self.kind, self._pad)
        stops = {"stop_strings": until, "tokenizer": self.tokenizer} if until else {}
        ids = self.model.generate(
            input_ids=batch["input_ids"].to(self._device),
            attention_mask=batch["attention_mask"].to(self._device),
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=self._pad,
            **stops,
        )
        if self.kind == "causal" and not isinstance(self.model, DePTModel):
            ids = ids[:, batch["input_ids"].shape[1] :]  # a plain causal LM returns its input first
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [_cut(t, until) for t in texts]

    def get_model_info(self) -> dict:
        return {"dept_kind": self.kind, "max_length": self.max_length}


def _cut(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def harness_task_name(task_name: str) -> str:
    """The harness name write_task gives a dept task: glue/sst2 -> dept_glue_sst2."""
    return "dept_" + re.sub(r"[^0-9a-zA-Z]+", "_", Path(task_name).stem if ":" in task_name else task_name).strip("_")


def write_task(
    task_name: str,
    folder,
    split: str = "test",
    data_dir=None,
    split_seed: int = 42,
    samples: Optional[int] = None,
    split_rule: str = "paper",
    task_options: Optional[dict] = None,
) -> str:
    """Write `folder/<name>.yaml` and `<name>.jsonl` (dept's source text and label of each example of
    the split, the first `samples` of them) so the harness scores a dept classification task offline,
    multiple choice over its label words, as dept's rank scoring does. Returns the harness task name."""
    from dept.tasks import get_task

    spec = get_task(task_name, **(task_options or {}))
    if spec.is_regression or not spec.label_words:
        raise UsageError(f"{task_name}: write_task needs a classification task (label words to choose from).")
    examples = spec.load(data_dir=data_dir, split_rule=split_rule, seed=split_seed, use_hub=data_dir is None)[split]
    examples = examples[:samples]
    if not examples:
        raise UsageError(f"{task_name}: no {split} examples to write.")
    name = harness_task_name(task_name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = (folder / f"{name}.jsonl").resolve()
    with open(data, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"source": e.source, "label": int(e.label)}, ensure_ascii=False) + "\n")
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {split: str(data)}},
        "test_split": split,
        "output_type": "multiple_choice",
        "doc_to_text": "source",
        "doc_to_target": "label",
        "doc_to_choice": list(spec.label_words),
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    # JSON is YAML: every string quoted, so no label word is read as a boolean or a number.
    (folder / f"{name}.yaml").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return name
