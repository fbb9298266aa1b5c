"""Compute providers: where instances come from (local processes, EC2, the simulator's)."""
