"""The virtual-clock cluster simulator: the gateway's scheduler and the engines' cost model and
state machines, driven by events on a virtual clock instead of HTTP and sleeps."""
