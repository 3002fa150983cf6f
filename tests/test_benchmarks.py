"""The sampler sweep's bookkeeping: `--resume` keeps finished rows and runs only what is missing,
the reference setting first, and never mixes in rows made with another n / batch / seed."""
import argparse
import importlib.util
import json
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("sweep", Path(__file__).parents[1] / "benchmarks" / "samplers.py")
sweep = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(sweep)


def row(name, settings):
    return {"sampler": name, "settings": settings, "frechet": 1.0}


def test_plan_keeps_finished_rows_and_runs_the_reference_first():
    grid = sweep.FULL
    finished = [row(g[0], dict(g[2])) for g in grid[:3]]
    stray = row("a sampler no longer in the grid", {"steps": 3})
    rows, todo = sweep.plan(grid, finished + [stray])
    assert rows == finished                                   # the stray row is dropped
    assert len(todo) == len(grid) - 3
    assert (todo[0][0], todo[0][2]) == (sweep.REFERENCE[0], sweep.REFERENCE[1])
    assert {sweep._key(g[0], g[2]) for g in todo}.isdisjoint({sweep._key(r["sampler"], r["settings"]) for r in rows})
    # settings compare as dicts: the key order of a JSON row does not matter
    reordered = [row(grid[0][0], dict(reversed(list(grid[0][2].items()))))]
    assert len(sweep.plan(grid, reordered)[1]) == len(grid) - 1


def test_earlier_rows_only_from_a_run_with_the_same_n_batch_and_seed(tmp_path):
    out = tmp_path / "samplers.json"
    args = argparse.Namespace(n=1000, batch=500, seed=0, out=out)
    assert sweep._earlier_rows(args) == []                    # nothing there yet
    earlier = [row("Heun ODE", {"steps": 5})]
    out.write_text(json.dumps({"n": 1000, "batch": 500, "seed": 0, "rows": earlier}))
    assert sweep._earlier_rows(args) == earlier
    for changed in ({"n": 500}, {"batch": 250}, {"seed": 1}):
        out.write_text(json.dumps({"n": 1000, "batch": 500, "seed": 0, "rows": earlier} | changed))
        assert sweep._earlier_rows(args) == []


@pytest.mark.parametrize("grid", [sweep.FULL, sweep.QUICK], ids=["full", "quick"])
def test_grid_settings_are_unique_and_accepted_by_their_samplers(grid):
    import inspect
    keys = [sweep._key(g[0], g[2]) for g in grid]
    assert len(keys) == len(set(keys))
    for _, sampler, settings in grid:
        assert set(settings) <= set(inspect.signature(sampler).parameters), (sampler.__name__, settings)
