"""``python -m sam3_lora.cli``: what ``accelerate launch`` and ``torchrun`` run."""

import sys

from sam3_lora.cli.main import main

sys.exit(main())
