"""Parameter sweeps: a sweep file (base scenario + axes), run in parallel locally or on Ray,
resumable, into one results table; and ``starsim plot`` over that table."""

from .run import RESULTS, execute_points, results_table, run_point, run_sweep
from .sweep_file import Point, Sweep, SweepFile, load_sweep

__all__ = ["RESULTS", "Point", "Sweep", "SweepFile", "execute_points", "load_sweep", "results_table", "run_point",
           "run_sweep"]
