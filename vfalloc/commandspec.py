"""The commands and flags of the one parser (cli.build_parser), read out of argparse as plain
records, for what is generated from them: the man page (vfalloc.manpage) and the completion
scripts (vfalloc.completion). Neither can drift from the parser: they are made from it.

Owns: the walk over argparse's objects. argparse keeps subcommands in `_SubParsersAction`
(`choices`: name -> parser; `_choices_actions`: the listed ones with their help) and each
parser's flags in `_actions`; these attributes have been the same from Python 3.2 to 3.13, and
tests/test_commandspec.py checks the walk against the parser's own parse_args.
Must not: render anything.
"""

from __future__ import annotations

import argparse

from .record import Record


class Option(Record):
    """One flag or positional argument of a command."""

    flags: tuple[str, ...]         # ("-c", "--connect"); () for a positional
    dest: str
    metavar: str | None            # what the help shows for its value; None when it takes none
    choices: tuple[str, ...] | None
    help: str
    repeat: bool                   # a positional that takes any number of values, or an append flag
    required: bool
    group: str                     # the argument group's title ("options" for most)

    @property
    def positional(self) -> bool:
        return not self.flags

    @property
    def takes_value(self) -> bool:
        return self.metavar is not None


class Command(Record):
    path: tuple[str, ...]          # () for vfalloc itself, ("host", "numvfs") for a subcommand
    help: str                      # the one line in the parent's list
    description: str
    options: tuple[Option, ...]
    subcommands: tuple[Command, ...]
    hidden: bool                   # not listed in --help (the completion scripts' helper)

    @property
    def name(self) -> str:
        return " ".join(("vfalloc", *self.path))

    def walk(self):
        """This command and every command under it, depth first, in the parser's order."""
        yield self
        for sub in self.subcommands:
            yield from sub.walk()

    def find(self, path: tuple[str, ...]) -> Command | None:
        return next((c for c in self.walk() if c.path == path), None)


def read(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help_text: str = "",
         hidden: bool = False) -> Command:
    options, subs = [], []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                subs.append(read(sub, (*path, name), listed.get(name, ""), hidden=name not in listed))
            continue
        if action.help == argparse.SUPPRESS:
            continue
        options.append(_option(parser, action))
    return Command(path, help_text, parser.description or "", tuple(options), tuple(subs), hidden)


def _option(parser: argparse.ArgumentParser, action: argparse.Action) -> Option:
    takes = action.nargs != 0
    if takes:
        metavar = action.metavar if isinstance(action.metavar, str) else (
            action.dest if not action.option_strings else action.dest.upper())
    else:
        metavar = None
    group = next((g.title for g in parser._action_groups if action in g._group_actions), None) or "options"
    repeat = action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction)
    choices = tuple(str(c) for c in action.choices) if action.choices is not None else None
    return Option(tuple(action.option_strings), action.dest, metavar, choices, _help(action), repeat,
                  bool(action.required) or (not action.option_strings and action.nargs not in ("?", "*")), group)


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:  # argparse's own interpolation, as --help shows it
        text = text % {**vars(action), "prog": "vfalloc"}
    return text


def spec() -> Command:
    """The whole command tree of `vfalloc`."""
    from .cli import build_parser

    return read(build_parser())
