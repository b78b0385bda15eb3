"""How we know: traces, the replay client, metrics, reports and the virtual-clock simulator."""
