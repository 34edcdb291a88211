import json

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from dept import DePTConfig, DePTModel


def test_budget_rule_matches_the_paper():
    assert DePTConfig.from_budget(budget_tokens=100, prompt_length=60, hidden_size=768, max_length=256).rank == 30
    assert DePTConfig.from_budget(100, 40, 768, 256).rank == 45
    assert DePTConfig.from_budget(100, 80, 768, 256).rank == 15
    assert DePTConfig.from_budget(100, 100, 768, 256).rank == 0


def test_parameter_count_equals_prompt_tuning_budget():
    backbone = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=768, intermediate_size=32, num_hidden_layers=1, num_attention_heads=12)
    )
    dm = DePTModel(backbone, DePTConfig(prompt_length=60, rank=30, max_length=256, prompt_init="vocab"))
    assert dm.num_trainable_parameters() == 76_800 == 100 * 768
    assert not any(p.requires_grad for p in backbone.parameters())
    assert DePTConfig(prompt_length=60, rank=30, max_length=256).num_trainable(768) == 76_800


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt_length": 0}, "prompt_length must be >= 1"),
        ({"rank": -1}, "rank must be >= 0"),
        ({"max_length": 0}, "max_length must be >= 1"),
        ({"lora_alpha": 0}, "lora_alpha must be a positive number"),
        ({"prompt_init": "zeros"}, "prompt_init must be one of"),
        ({"rank": 2.5}, "rank must be an integer"),
        ({"prompt_init": "text", "init_text": ""}, "init_text must be non-empty"),
    ],
)
def test_invalid_config_says_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DePTConfig(**kwargs)


def test_budget_smaller_than_prompt_is_refused():
    with pytest.raises(ValueError, match="exceeds the budget"):
        DePTConfig.from_budget(50, 60, 768, 256)


def test_json_round_trip_and_malformed_input(tmp_path):
    cfg = DePTConfig(prompt_length=40, rank=45, max_length=128, lora_alpha=16, prompt_init="vocab", seed=7)
    assert DePTConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "cfg.json"
    path.write_text(cfg.to_json())
    assert DePTConfig.from_json(path) == cfg
    assert cfg.scaling == pytest.approx(16 / 45**0.5)
    with pytest.raises(ValueError, match="Unknown DePTConfig field"):
        DePTConfig.from_dict({**cfg.to_dict(), "ranks": 3})
    with pytest.raises(ValueError, match="malformed"):
        DePTConfig.from_json('{"rank": 3,')
    with pytest.raises(ValueError, match="must be a JSON object"):
        DePTConfig.from_dict(json.loads("[1, 2]"))
