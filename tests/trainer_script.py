"""A DePTTrainer script as a user writes one, for `accelerate launch` in tests/test_trainer.py:
train DePT on a tiny model for a few steps and save the adapter."""

import sys

from transformers import TrainingArguments

from dept import DePTConfig, DePTModel, load_backbone
from dept.data import encode
from dept.integrations.trainer import DePTTrainer, collator

backbone_dir, out = sys.argv[1], sys.argv[2]
model, tokenizer = load_backbone(backbone_dir)
dm = DePTModel(model, DePTConfig(prompt_length=4, rank=2, max_length=32, prompt_init="vocab"))
rows = [encode(tokenizer, f"review {i}: it was {w}", w, dm.kind, 32) for i, w in enumerate(["good", "bad"] * 8)]
args = TrainingArguments(out, max_steps=3, per_device_train_batch_size=2, save_steps=3, report_to=[], use_cpu=True,
                         ddp_backend="gloo", logging_steps=1, disable_tqdm=True)  # fmt: skip
trainer = DePTTrainer(model=dm, args=args, train_dataset=rows, data_collator=collator(tokenizer, dm),
                      lr_prompt=0.05, lr_lowrank=0.02)  # fmt: skip
trainer.train()
if trainer.is_world_process_zero():
    print(f"world_size={trainer.args.world_size}")
