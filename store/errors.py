"""Errors about bad input that say what and where: file, line and field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Problem:
    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": field {self.field!r}"
        return f"{where}: {self.message}"


class InputError(ValueError):
    """Bad input: one or more problems, each naming file, line and field. Nothing was written."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} problem(s) in the input, nothing was written:\n{shown}{more}")

    @classmethod
    def one(cls, file: str | Path, line: int | None, field: str | None, message: str) -> InputError:
        return cls([Problem(str(file), line, field, message)])
