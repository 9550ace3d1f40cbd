"""Sub-command groups that several areas register into (`ops`, `spend`, `bench`).

Each area's `register(subparsers)` asks for a group by name; the first to ask creates it.
"""

from __future__ import annotations

import argparse
from typing import Any

Subparsers = argparse._SubParsersAction  # argparse exposes no public name for it


def command_group(sub: Subparsers[Any], name: str, help: str) -> Subparsers[Any]:
    """The sub-commands of group `name` under `sub`, creating the group if it is new."""
    parser: argparse.ArgumentParser | None = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=help)
    for action in parser._actions:  # argparse keeps a parser's sub-commands only here
        if isinstance(action, argparse._SubParsersAction):
            group: Subparsers[Any] = action
            return group
    return parser.add_subparsers(dest=name, required=True)
