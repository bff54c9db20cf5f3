"""Test files mirror the packages (tests/dpo/ for fyp/dpo/, tests/hpc/ for hpc/, ...); the fixture modules
shared across folders (fixtures_*.py) stay here, on the import path of every test."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
