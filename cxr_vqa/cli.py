"""One way to configure every command: typed dataclasses (a field per option, with help and a safe default), a YAML
file for defaults, flags to override. Built on transformers' `HfArgumentParser` (what TRL's `TrlParser` extends), so
TRL's own `SFTConfig` parses the same way as our dataclasses.

    (cfg,) = parse_config([EvalConfig], argv, prog="python -m evaluation", description=__doc__)
    with user_errors():          # a UserError becomes one line on stderr and exit status 2
        run(cfg)

Every option is spelt `--name_with_underscores` or `--name-with-dashes`; a boolean that defaults to true gets
`--no-name`; the 4-bit switch is the field `load_in_4bit` everywhere, turned off with `--no-4bit`. Unknown flags,
unknown YAML keys and values the dataclasses reject exit 2, the last stderr line naming the problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cxr_vqa.errors import UserError

FOUR_BIT = "load_in_4bit"


class Repeat(argparse.Action):
    """`--adapter A --adapter B` (or `--adapter A B`) gives [A, B], replacing the default or YAML list rather than
    extending it (argparse's own "extend" would add the flags to the defaults)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_repeated", set())
        items = list(getattr(namespace, self.dest) or []) if self.dest in seen else []
        seen.add(self.dest)
        setattr(namespace, self.dest, items + (list(values) if isinstance(values, list) else [values]))


REPEATABLE = {"action": Repeat}  # field metadata of a list option that may be given several times


def parse_config(
    types: Sequence[type], argv: Sequence[str] | None = None, *, prog: str, description: str | None = None
):
    """Instances of `types` from `--config FILE` (YAML defaults) and the flags in `argv` (which win)."""
    from transformers import HfArgumentParser

    try:  # building it runs the defaults, some of which read the environment
        parser = HfArgumentParser(
            list(types),
            prog=prog,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,  # a misspelt flag must fail, not be guessed
        )
    except UserError as err:
        print(f"{prog}: error: {_first_line(err)}", file=sys.stderr)
        sys.exit(2)
    parser.add_argument("--config", metavar="YAML", help="a YAML file of option: value; flags given here override it")
    fields = {f.name: f for t in types for f in dataclasses.fields(t) if f.init}
    if FOUR_BIT in fields:
        parser.add_argument("--no-4bit", dest=FOUR_BIT, action="store_false", help="full precision, not 4-bit nf4")
    argv = list(sys.argv[1:] if argv is None else argv)
    config_file = parser.parse_known_args(argv)[0].config
    if config_file:
        _apply_yaml(parser, config_file, fields)
    namespace = vars(parser.parse_args(argv))
    outputs = []
    for kind in types:
        names = {f.name for f in dataclasses.fields(kind) if f.init}
        try:
            outputs.append(kind(**{k: v for k, v in namespace.items() if k in names}))
        except (UserError, ValueError, TypeError) as err:  # __post_init__ checks, bad value types
            parser.error(_first_line(err))
    return tuple(outputs)


def _apply_yaml(parser: argparse.ArgumentParser, path: str, fields: dict[str, dataclasses.Field]) -> None:
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        parser.error(f"cannot read --config {path}: {err.strerror or err}")
    except yaml.YAMLError as err:
        parser.error(f"--config {path} is not valid YAML: {_first_line(err)}")
    if not isinstance(loaded, dict):
        parser.error(f"--config {path} must hold a mapping of option: value")
    values = {str(key).replace("-", "_"): value for key, value in loaded.items()}
    unknown = sorted(set(values) - fields.keys())
    if unknown:
        parser.error(f"unknown key(s) in {path}: {', '.join(unknown)} (`{parser.prog} --help` lists the options)")
    for key, value in values.items():  # set_defaults skips argparse's checks: a YAML typo must not pass silently
        if fields[key].metadata.get("action") is Repeat and isinstance(value, str):
            values[key] = value = [value]  # `adapter: runs/a`, one item without the list around it
        allowed = fields[key].metadata.get("choices")
        for item in value if isinstance(value, list) else [value]:
            if allowed is not None and item is not None and item not in allowed:
                parser.error(f"{key} in {path} must be one of {', '.join(map(str, allowed))}, got {item!r}")
    parser.set_defaults(**values)  # so flags still win; options therefore never are `required`


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a UserError raised inside into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except UserError as err:
        print(f"error: {_first_line(err)}", file=sys.stderr)
        sys.exit(2)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    if not text:
        return type(err).__name__
    lines = text.splitlines()
    if lines[0].startswith("Caught ") and "Original Traceback" in text:  # torch re-raising a DataLoader worker's error
        return lines[-1].split(": ", 1)[-1]  # its last line, "package.SomeError: message"
    return lines[0]
