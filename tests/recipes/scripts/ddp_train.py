"""Run by tests/test_train.py under torchrun: train, then dump this rank's LoRA tensors.

Usage: ddp_train.py OUT_DIR config overrides...
"""

import sys
from pathlib import Path

from safetensors.torch import save_file

from sam3_lora.config import load_config
from sam3_lora.lora.apply import lora_state_dict
from sam3_lora.recipes.train import SAM3LoRATrainer

out = Path(sys.argv[1])
trainer = SAM3LoRATrainer(load_config(sys.argv[2], sys.argv[3:]), quiet=True)
trainer.train()
rank = trainer.accelerator.process_index
state = {k: v.detach().cpu().contiguous() for k, v in lora_state_dict(trainer.peft_model).items()}
save_file(state, out / f"rank{rank}.safetensors")
