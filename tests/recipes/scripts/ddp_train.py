"""Run by tests/test_train.py under torchrun: train, then dump this rank's LoRA tensors.

Usage: ddp_train.py OUT_DIR config overrides...
With POISON=RANK:CALL in the environment, that rank's CALL-th loss computation (1-based) sees
NaN predicted boxes, as a diverged model would give.
"""

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from sam3_lora.config import load_config
from sam3_lora.lora.apply import lora_state_dict
from sam3_lora.recipes.train import SAM3LoRATrainer

out = Path(sys.argv[1])
trainer = SAM3LoRATrainer(load_config(sys.argv[2], sys.argv[3:]), quiet=True).setup()
if os.environ.get("POISON"):
    poison_rank, poison_call = map(int, os.environ["POISON"].split(":"))
    criterion, calls = trainer.criterion, []

    def poisoned(outputs, targets):
        calls.append(1)
        if trainer.accelerator.process_index == poison_rank and len(calls) == poison_call:
            outputs = {**outputs, "pred_boxes": outputs["pred_boxes"] * float("nan")}
        return criterion(outputs, targets)

    trainer.criterion = poisoned
trainer.train()
rank = trainer.accelerator.process_index
state = {k: v.detach().cpu().contiguous() for k, v in lora_state_dict(trainer.peft_model).items()}
save_file(state, out / f"rank{rank}.safetensors")
