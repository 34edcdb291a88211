"""Default learning rates follow the backbone's embedding scale; runs record the rates they used."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from dept.core.rates import LOWRANK_RATE_PER_RMS, PROMPT_RATE_PER_RMS, embedding_rms, with_default_rates
from dept.methods import METHODS
from dept.options import MethodOptions
from dept.runs.train import Run
from test_train import options, tiny_setup  # noqa: F401  (fixture)


class ScaledEmbedding(nn.Embedding):
    """Gemma multiplies its embeddings by sqrt(d): the rule must see what the layer outputs."""

    def forward(self, ids):
        return super().forward(ids) * 4.0


class Backbone(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def get_input_embeddings(self):
        return self.layer


def test_rms_is_what_the_embedding_layer_outputs():
    plain = nn.Embedding(10_000, 8)
    nn.init.constant_(plain.weight, 0.5)
    assert embedding_rms(Backbone(plain), chunk=3000) == pytest.approx(0.5)
    scaled = ScaledEmbedding(100, 8)
    nn.init.constant_(scaled.weight, 0.5)
    assert embedding_rms(Backbone(scaled)) == pytest.approx(2.0)


def test_unset_rates_scale_with_the_embeddings_and_given_ones_stay():
    layer = nn.Embedding(64, 8)
    nn.init.constant_(layer.weight, 2.0)
    filled = with_default_rates(MethodOptions(), Backbone(layer))
    assert filled.lr_prompt == pytest.approx(PROMPT_RATE_PER_RMS * 2.0)
    assert filled.lr_lowrank == pytest.approx(LOWRANK_RATE_PER_RMS * 2.0)
    given = with_default_rates(MethodOptions(lr_prompt=0.3), Backbone(layer))
    assert given.lr_prompt == 0.3 and given.lr_lowrank == pytest.approx(LOWRANK_RATE_PER_RMS * 2.0)


def test_a_run_without_rates_trains_with_the_backbone_defaults_and_records_them(tiny_setup, tmp_path):  # noqa: F811
    opts = options(tiny_setup, tmp_path)
    opts = dataclasses.replace(opts, method=dataclasses.replace(opts.method, lr_prompt=None, lr_lowrank=None))
    results = Run(opts).fit()
    from dept import load_backbone

    expected = with_default_rates(MethodOptions(), load_backbone(str(tiny_setup / "model"))[0])
    assert (results["lr_prompt"], results["lr_lowrank"], results["lr"]) == (
        expected.lr_prompt,
        expected.lr_lowrank,
        None,
    )
    stored = json.loads((tmp_path / "run.json").read_text())["method"]
    assert (stored["lr_prompt"], stored["lr_lowrank"]) == (expected.lr_prompt, expected.lr_lowrank)
    # Resuming with the rates still unset is the same run: no "changed options" for the defaults.
    resumed = Run(dataclasses.replace(opts, resume=True, max_steps=7)).fit()
    assert resumed["lr_prompt"] == expected.lr_prompt


def test_bf16_keeps_frozen_backbones_in_bf16_but_not_full_fine_tuning():
    for name in ("dept", "pt", "adept", "lora"):
        assert METHODS[name].backbone_dtype("bf16") == torch.bfloat16
        assert METHODS[name].backbone_dtype("fp32") == torch.float32
    assert METHODS["full"].backbone_dtype("bf16") == torch.float32


@pytest.mark.parametrize("method", ["dept", "lora"])
def test_bf16_runs_train_their_adapter_in_fp32_on_a_bf16_backbone(tiny_setup, tmp_path, method):  # noqa: F811
    opts = options(tiny_setup, tmp_path, precision="bf16")
    opts = dataclasses.replace(opts, method=dataclasses.replace(opts.method, method=method))
    run = Run(opts)
    assert run.backbone.get_input_embeddings().weight.dtype == torch.bfloat16
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    results = run.fit()
    assert results["precision"] == "bf16" and results["best_validation"] is not None


def test_the_head_rate_is_one_number():
    """dept.core.optim needs it torch-side and the options torch-free: two spellings, one value."""
    from dept.core.optim import LR_HEAD

    assert MethodOptions().lr_head == LR_HEAD
