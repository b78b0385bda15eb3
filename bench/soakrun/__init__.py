"""The pieces of `bench/soak.py`: the cluster it drives, the agents, the samplers, the report."""
