"""Who computes: worker registry and health, the SGLang PD client, the simulated SGLang worker and
the engine cost model."""
