"""Problems found in configuration files, with the position an operator needs to fix them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]

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
