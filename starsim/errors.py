"""Errors a user can act on: which file, which field, what was expected."""

from __future__ import annotations


class StarsimError(Exception):
    """Base class for errors caused by user input (exit code 2 in the CLI)."""


class ScenarioError(StarsimError):
    """A scenario file (or an override) is invalid.

    ``problems`` holds one ``(field_path, message)`` pair per problem so the CLI can print
    one line each, e.g. ``scenarios/x.yaml: targets.0.count: must be >= 1 (got 0)``.
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        # args must rebuild the error: SimPy re-raises a process's failure as type(e)(*e.args).
        super().__init__(source, problems)

    @classmethod
    def from_validation(cls, source: str, err) -> ScenarioError:
        """One problem per error of a pydantic ``ValidationError`` (plain dotted locations)."""
        return cls(source, [(".".join(str(x) for x in e["loc"]), e["msg"]) for e in err.errors()])

    def lines(self) -> list[str]:
        out = []
        for path, msg in self.problems:
            where = f"{self.source}: {path}" if path else self.source
            out.append(f"{where}: {msg}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())
