"""Tier binding on the device: a bundle signed for one device tier installs only on that tier."""

from __future__ import annotations

from collections.abc import Callable

from fedge.client.runtime.verify import BundleError


def check_tier(
    made_for: str, tier: str, assigned: str, installed: Callable[[], str], switch: bool
) -> None:
    """BundleError("tier") unless a bundle made for tier `made_for` may install here.

    An untiered bundle ("") installs anywhere. A device that names its tier (`tier`: its
    device-class, `fedge install --tier`) takes only that tier's bundles. One that names none
    takes a bundle of the tier the server says it assigned it (`assigned`, "" when it says
    none), and is held to the tier of the highest model it installed (`installed()`, from its
    signed manifest), so a later bundle of another tier does not replace it unless a switch is
    allowed (allow-model-switch).
    """
    if not made_for or made_for == tier:
        return
    if tier:
        raise BundleError(
            "tier",
            f"the bundle is for device tier {made_for!r}, this device is tier {tier[:40]!r}; "
            "install the bundle of its own tier (bundles/<tier>/ of the run)",
        )
    if assigned and assigned != made_for:
        raise BundleError(
            "tier",
            f"the bundle is for device tier {made_for!r}, but the server assigned this device "
            f"tier {assigned[:40]!r}",
        )
    current = installed()
    if current and current != made_for and not switch:
        raise BundleError(
            "tier",
            f"the bundle is for device tier {made_for!r}, the installed model for {current!r}; "
            "allow a switch explicitly (allow-model-switch) to change tiers",
        )
