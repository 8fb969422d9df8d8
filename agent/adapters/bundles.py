"""The device's bundle reader: a downloaded bundle checked and unpacked for the slots."""

from __future__ import annotations

from pathlib import Path

from agent.update_ports import BundleContents, BundleRefusedError


class BundleFiles:
    """Bundles read with :mod:`firmware_bundles.verify` (payload hashes, manifest).

    ``extract``: unpack the payload into the staging directory (directory slots need the
    files); otherwise only verify the archive (simulated slots keep no files).
    """

    def __init__(self, *, extract: bool) -> None:
        self.extract = extract

    def read(self, bundle: Path, staging: Path | None) -> BundleContents:
        """Verify ``bundle`` (and unpack it into ``staging``); its manifest's details."""
        import msgspec

        from firmware_bundles.errors import BundleError
        from firmware_bundles.verify import extract_bundle, verify_bundle

        try:
            if self.extract and staging is not None:
                manifest = extract_bundle(bundle, staging)
            else:
                manifest = verify_bundle(bundle)
        except BundleError as exc:
            raise BundleRefusedError(str(exc)) from None
        return BundleContents(
            version=manifest.version,
            hardware_revisions=tuple(manifest.hardware_revisions),
            health=msgspec.to_builtins(manifest.health_check) if manifest.health_check else None,
            simulation=msgspec.to_builtins(manifest.simulation) if manifest.simulation else None,
            raspberry_pi=(
                msgspec.to_builtins(manifest.raspberry_pi) if manifest.raspberry_pi else None
            ),
        )
