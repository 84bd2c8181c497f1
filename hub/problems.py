"""Problems found in configuration files, with the position an operator needs to fix them."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

logger = logging.getLogger(__name__)

Severity = Literal["error", "warning"]
T = TypeVar("T")

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Problem:
    """One finding in a file; line and col are 1-based, path like `units[0].households[2].panel`."""

    file: str
    line: int | None
    col: int | None
    path: str
    message: str
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def format(self) -> str:
        """`file:line:col: severity: path: message`, leaving out the parts that are unknown."""
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        parts = [where, self.severity]
        if self.path:
            parts.append(self.path)
        parts.append(self.message)
        return ": ".join(parts)


class ConfigError(Exception):
    """A configuration file cannot be used; `problems` says every reason found."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(problem.format() for problem in self.problems)


def format_path(path: Sequence[str | int]) -> str:
    """Render a data path as `units[0].households[2].panel` ("" for the whole document)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Problems in the order of the file: whole-file ones first, then by line and column."""
    return sorted(problems, key=lambda p: (p.file, p.line or 0, p.col or 0))


def load_checked(
    path: str | Path, what: str, parse: Callable[[str, str], tuple[T | None, list[Problem]]]
) -> T:
    """Read a config file and check it with `parse`; ConfigError listing every problem found.

    Warnings alone do not stop loading: they are logged.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(file, None, None, "", f"{what} file not found")]) from None
    except UnicodeDecodeError as exc:
        message = f"{what} file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise ConfigError([Problem(file, None, None, "", message)]) from None
    except OSError as exc:
        message = f"cannot read the {what} file: {exc.strerror or exc}"
        raise ConfigError([Problem(file, None, None, "", message)]) from None
    parsed, problems = parse(text, file)
    if parsed is None:
        raise ConfigError(problems)
    for problem in problems:
        logger.warning("%s", problem.format())
    return parsed
