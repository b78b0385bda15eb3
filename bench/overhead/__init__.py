"""Pieces of bench/gateway_overhead.py: client, systems under test, report."""
