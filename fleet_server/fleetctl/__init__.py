"""``fleetctl``: the operators' command line over the fleet API."""
