"""Loading a scenario: a YAML file, ``--set`` overrides on top, validation with errors that name fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ScenarioError
from ..yaml_files import read_yaml
from .draft import SERVER_OFF
from .error_paths import _problems
from .overrides import apply_override, parse_override
from .schema import Scenario


def validate_scenario(data: Any, source: str = "<scenario>", base_dir: str | Path = ".",
                      profiles: dict | None = None) -> Scenario:
    """Validate a scenario mapping; raise :class:`ScenarioError` naming field paths.
    ``profiles``: a cache of profile files read, kept by a caller that validates many
    scenarios on the same profiles (a plan: parsing a profile's YAML takes ~0.3 s)."""
    if not isinstance(data, dict):
        raise ScenarioError(source, [("", f"expected a mapping at the top level, got {type(data).__name__}")])
    try:
        return Scenario.model_validate(data, context={"base_dir": str(base_dir), "profiles": profiles})
    except ValidationError as err:
        raise ScenarioError(source, _problems(err, data)) from None


def as_mode(scenario: Scenario, mode: str) -> Scenario:
    """The same scenario in another mode (a baseline of it): outside a star, the draft
    server's own features (``SERVER_ONLY``) are off; everything else, pools included, stays."""
    data = scenario.to_dict()
    data["mode"] = mode
    for path, off in SERVER_OFF.items() if mode != "star" else ():
        apply_override(data, path, off)
    return validate_scenario(data, source=f"{scenario.name} as {mode}")


def load_scenario(path: str | Path, overrides: list[str] | dict[str, Any] | None = None,
                  profiles: dict | None = None) -> Scenario:
    """Load a scenario YAML, apply ``--set`` style overrides, validate.

    ``overrides`` is a list of ``"field.path=value"`` strings or a ``{path: value}`` dict;
    ``profiles``: see :func:`validate_scenario`.
    """
    p = Path(path)
    source = str(path)
    data = read_yaml(p, "scenario")
    if data is None:
        raise ScenarioError(source, [("", "the file is empty")])
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for k, v in items:
        if isinstance(data, dict):
            apply_override(data, k, v, source=f"{source} (--set {k})")
    try:
        return validate_scenario(data, source=source, base_dir=p.parent, profiles=profiles)
    except ScenarioError as err:
        # Say which problems an override caused, or the user looks for them in the file.
        def origin(field: str) -> str | None:
            for k, _ in reversed(items):
                if field == k or field.startswith(k + ".") or k.startswith(field + "."):
                    return k
            return None

        causes = {origin(f) for f, _ in err.problems}
        if len(causes) == 1 and None not in causes:
            raise ScenarioError(f"{source} (--set {causes.pop()})", err.problems) from None
        tagged = [(f, m if origin(f) is None else f"{m} (set by --set {origin(f)})") for f, m in err.problems]
        raise ScenarioError(source, tagged) from None
