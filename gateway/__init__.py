"""The HTTP face: OpenAI API, request pipeline, PD dispatch, scheduler, telemetry.

Kept free of imports so `gateway.scheduler` loads without FastAPI (the simulator uses it).
"""
