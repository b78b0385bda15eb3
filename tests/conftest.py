from __future__ import annotations

from hypothesis import HealthCheck, settings

# The machine is shared and has two cores: judge properties, not the speed of generating inputs.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150
)
settings.load_profile("default")
