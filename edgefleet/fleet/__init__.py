"""The emulated device fleet: network namespaces with a real sshd each, standing in for boards."""
from edgefleet.fleet.devices import IDENTITY_FILE, DeviceSpec
from edgefleet.deploy.inventory import Inventory, InventoryDevice, load_inventory
from edgefleet.fleet.lifecycle import EmulatedFleet, choose_isolation, fleet_down, fleet_up, link_down, set_link
from edgefleet.fleet.system import FleetError

__all__ = [
    "IDENTITY_FILE", "DeviceSpec", "EmulatedFleet", "FleetError", "Inventory", "InventoryDevice",
    "choose_isolation", "fleet_down", "fleet_up", "link_down", "load_inventory", "set_link",
]
