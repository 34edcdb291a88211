"""dept inside the Hugging Face workflow: transformers.Trainer and TRL's SFTTrainer (`trainer`), and
lm-evaluation-harness (`lm_eval`). Each module needs dept's [hf] extra."""
