"""vfalloc.commandspec reads the parser's commands and flags out of argparse's private
attributes, for the man page and the completion scripts: checked here against what the parser
itself accepts, so a Python whose argparse keeps them elsewhere fails this, not the man page."""

from __future__ import annotations

import pytest

from vfalloc.cli import build_parser
from vfalloc.commandspec import Command, Option, spec
from vfalloc.errors import UsageError

TREE = spec()
LEAVES = [c for c in TREE.walk() if not c.subcommands]


def value_for(option: Option) -> str:
    """A value the option takes: its first choice, else a number (every typed option is numeric)."""
    return option.choices[0] if option.choices else "1"


def base_argv(command: Command) -> list[str]:
    """The command with its required arguments."""
    argv = list(command.path)
    for option in command.options:
        if option.required:
            argv += [value_for(option)] if option.positional else [option.flags[-1], value_for(option)]
    return argv


@pytest.mark.parametrize("command", LEAVES, ids=[c.name for c in LEAVES])
def test_every_flag_the_walk_reads_is_one_the_parser_takes(command):
    parser = build_parser()
    args = parser.parse_args(base_argv(command))
    assert getattr(args, "func", None) is not None or command.hidden
    for option in command.options:
        if option.positional or option.required or option.dest in ("help", "version"):  # these exit
            continue
        for flag in option.flags:
            argv = base_argv(command) + [flag] + ([value_for(option)] if option.takes_value else [])
            parsed = parser.parse_args(argv)
            assert hasattr(parsed, option.dest), (command.name, flag)
            if option.takes_value and option.choices:
                value = getattr(parsed, option.dest)
                assert option.choices[0] in (str(value), value if isinstance(value, str) else value[-1]), \
                    (command.name, flag, value)


def test_the_walk_finds_every_command_the_parser_takes():
    parser = build_parser()
    for command in TREE.walk():
        if command.path and not command.subcommands:
            parser.parse_args(base_argv(command))  # argparse exits on an unknown command
    with pytest.raises(UsageError, match="invalid choice"):
        parser.parse_args(["no-such-command"])
