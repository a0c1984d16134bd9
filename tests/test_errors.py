"""One user-facing exception: one line, and the option that fixes it named for the caller."""

from sam3_lora.cli.main import build_parser, option_flags
from sam3_lora.errors import Sam3LoraError


def test_the_fixing_option_is_named_for_python_and_for_the_command_line():
    error = Sam3LoraError("runs/x: no checkpoint there", option="resume")
    assert str(error) == "runs/x: no checkpoint there (argument resume)"
    flags = option_flags(build_parser())
    assert error.worded(flags.get) == "runs/x: no checkpoint there (--resume)"
    assert {flags["overwrite"], flags["names"], flags["iou_type"]} == {"--overwrite", "--names", "--iou-type"}
    assert str(Sam3LoraError("plain")) == "plain"
