"""The README's table of DWM flags stays in step with pretrain_dwm.py's parser: every `--dwm-*`
flag is listed, and every row that names one flag states that flag's default."""

from __future__ import annotations

import re
from pathlib import Path

from megatron_dwm.arguments import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| (?P<flags>`--dwm-[^|]*) \| (?P<default>[^|]*) \| .* \|$")


def _table_rows() -> list[tuple[list[str], str]]:
    rows = []
    for line in README.read_text().splitlines():
        match = ROW.match(line.strip())
        if match:
            flags = re.findall(r"`(--dwm-[a-z-]+)", match["flags"])
            rows.append((flags, match["default"].strip()))
    return rows


def _parser_dwm_options() -> dict[str, object]:
    defaults = {}
    for action in build_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--dwm-"):
                defaults[option] = action.default
    return defaults


def _states(readme_default: str, parser_default: object) -> bool:
    if parser_default is None:
        return readme_default == "none"
    if isinstance(parser_default, bool):
        return readme_default == ("on" if parser_default else "off")
    if isinstance(parser_default, (int, float)):
        return float(readme_default) == parser_default
    if isinstance(parser_default, list):  # nargs: the values as a user types them
        return [float(value) for value in readme_default.split()] == parser_default
    return readme_default == str(parser_default)


def test_every_dwm_flag_is_in_the_readme_table():
    listed = {flag for flags, _ in _table_rows() for flag in flags}
    options = _parser_dwm_options()
    assert sorted(set(options) - listed) == [], "DWM flags missing from README's table"
    assert sorted(listed - set(options)) == [], "README lists DWM flags the parser does not have"


def test_single_flag_rows_state_the_parser_default():
    options = _parser_dwm_options()
    checked = 0
    for flags, default in _table_rows():
        if len(flags) != 1 or options[flags[0]] is None and default != "none":
            continue  # a derived default (for example "global batch / 4") is explained in words
        assert _states(default, options[flags[0]]), (flags[0], default, options[flags[0]])
        checked += 1
    assert checked >= 8
