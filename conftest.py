"""Test set-up: notebooks run by nbmake in quick mode; the unit tests are CPU, seeded, small."""
import os

# Notebooks executed through nbmake read SDELIB_QUICK=1 (smaller sizes, every cell still runs).
os.environ.setdefault("SDELIB_QUICK", "1")
