"""The layout's rules that import-linter cannot see: below ``cli/`` the library neither
prints nor names command-line flags; it raises, and the command line words the message."""

import ast
import re
from pathlib import Path

import sam3_lora
from sam3_lora.cli.main import build_parser

PACKAGE = Path(sam3_lora.__file__).parent
LIBRARY = sorted(p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts)


def cli_flags() -> set[str]:
    """Every option string of every command and sub-command, e.g. '--resume'."""
    flags, parsers = set(), [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            flags.update(s for s in action.option_strings if s.startswith("--"))
            if isinstance(getattr(action, "choices", None), dict):
                parsers.extend(action.choices.values())
    return flags - {"--help", "--version"}


# The original tool's ``apply_lora_to_model`` prints its table (``verbose=True``); its users
# expect that, so it is the one print allowed below the command line.
ALLOWED_PRINTS = {"lora/apply.py"}


def message_texts(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, text) of every string the code builds: plain strings, and f-strings with their
    literal parts joined. Bare string statements (docstrings, attribute docstrings) are
    documentation and left out."""
    documentation = {id(node.value) for node in ast.walk(tree)
                     if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    parts_of_fstrings = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                         for part in node.values}
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            texts.append((node.lineno, "".join(p.value for p in node.values if isinstance(p, ast.Constant))))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in documentation | parts_of_fstrings):
            texts.append((node.lineno, node.value))
    return texts


def test_the_library_never_prints():
    printing = [f"{path.relative_to(PACKAGE)}:{node.lineno}" for path in LIBRARY
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
                and str(path.relative_to(PACKAGE)) not in ALLOWED_PRINTS]
    assert printing == []


def test_the_library_names_no_command_line_flag():
    flags = cli_flags()
    assert {"--resume", "--overwrite", "--output"} <= flags
    pattern = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-_]*)")
    named = []
    for path in LIBRARY:
        for line, text in message_texts(ast.parse(path.read_text())):
            if "sam3-lora " in text:   # a whole example command line may show its flags
                continue
            named += [f"{path.relative_to(PACKAGE)}:{line} {flag}" for flag in pattern.findall(text) if flag in flags]
    assert named == []
