"""Pure fleet-server decisions: presence ordering, alarm lifecycle, roles, CSV validation.

Nothing here does I/O; services feed these functions observations and time.
"""
