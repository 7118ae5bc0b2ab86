"""``python -m quorumkv.sim``: the deterministic Raft simulator (implemented in ``quorumkv.testing``)."""

from quorumkv.testing.sim import SimParams, SimResult, Simulation, run_seed
from quorumkv.testing.sim_cli import main

__all__ = ["SimParams", "SimResult", "Simulation", "main", "run_seed"]
