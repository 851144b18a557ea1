"""A finished run: the scenario, its records, its summary, and how to write them out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .records import Records
from .scenario import Scenario


def dump_json(obj: Any, path: Path) -> None:
    # allow_nan=False: a NaN must have become null in metrics, never invalid JSON
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


@dataclass
class Result:
    scenario: Scenario
    records: Records
    summary: dict[str, Any]
    # real runs: one dict per finished request (request, target, prompt, output token ids)
    outputs: list[dict[str, Any]] | None = None

    @property
    def rounds(self) -> pd.DataFrame:
        return self.records.rounds

    @property
    def requests(self) -> pd.DataFrame:
        return self.records.requests

    @property
    def intervals(self) -> pd.DataFrame:
        return self.records.intervals

    def write(self, out: str | Path, csv: bool = False, trace: bool = True, trace_s: float = 20.0) -> Path:
        """Write the run directory: scenario.yaml, summary.json, tables, meta.json, trace.json
        (and outputs.jsonl for a real run)."""
        from .trace import chrome_trace

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scenario.yaml").write_text(yaml.safe_dump(self.scenario.to_dict(), sort_keys=False))
        dump_json(self.summary, out / "summary.json")
        self.records.write(out, csv=csv)
        if self.outputs is not None:
            with open(out / "outputs.jsonl", "w") as f:
                for row in self.outputs:
                    f.write(json.dumps(row) + "\n")
        if trace:
            t0 = float(self.records.meta.get("warmup_s", 0.0))
            (out / "trace.json").write_text(json.dumps(chrome_trace(self.records, t0, t0 + trace_s)))
        return out
