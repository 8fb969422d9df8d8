"""Fleet identity: the device certificate authority and the broker's access rules.

* :mod:`.csr_policy` (pure) decides whether a certificate signing request may become a
  device certificate;
* :mod:`.certificates` (pure) builds root, issuing, device, service and server
  certificates and the revocation list, from keys and an explicit ``now``;
* :mod:`.ca_store` keeps the CA on disk: the offline root directory and the online
  issuing directory with its index of issued certificates and its CRL;
* :mod:`.mosquitto_config` renders the Mosquitto listener and ACL file for the fleet;
* :mod:`.cli` is the ``ca`` command group (mounted as ``fleet-server ca``).

The credentials bundle's format is :mod:`protocol.credentials` and the durable file
writes are :mod:`firmware_bundles.files`, shared with the agent; the device side (key and
CSR generation, checking a bundle it reads) lives in :mod:`agent.credentials`. The server
imports nothing from the agent, and the agent nothing from the server.
"""
