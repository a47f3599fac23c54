"""Every option of every `minireft` subcommand says what it does in --help: more than no text,
more than its default alone ("(default 8)" tells the value, not what it sets)."""

from __future__ import annotations

import argparse
import re

from minireft import cli

DEFAULT_ONLY = re.compile(r"\(default.*\)\s*$")  # "(default %(default)s)" and the like, at the end


def _options():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, subparser in sub.choices.items():
        for action in subparser._actions:
            if not isinstance(action, argparse._HelpAction):
                yield command, "/".join(action.option_strings) or action.dest, action.help


def test_every_option_of_every_subcommand_has_help_text():
    options = list(_options())
    assert {command for command, _, _ in options} == set(cli.SUBCOMMANDS)
    bare = [f"{command} {name}: {text!r}" for command, name, text in options
            if not DEFAULT_ONLY.sub("", text or "").strip()]
    assert not bare, "options without help text:\n" + "\n".join(bare)


def test_the_check_rejects_an_option_with_only_its_default():
    assert not DEFAULT_ONLY.sub("", "(default %(default)s)").strip()
    assert DEFAULT_ONLY.sub("", "the rank r (default %(default)s)").strip() == "the rank r"
