"""The agent's pure core: decisions from observations, time and bytes; no I/O.

The same core runs inside the real daemon and many times inside one simulator process
with a simulated clock, so nothing here reads the clock, sleeps, or touches the network.
"""
