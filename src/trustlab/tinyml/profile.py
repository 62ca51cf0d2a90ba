"""Device profiles: a YAML/JSON description of a device, validated against a JSON schema.

Errors name the field (``debug.readout_protection: expected a boolean``) and suggest the
closest known field for a typo. The attack catalog refers to profiles only through the named
*conditions* below, so what makes an attack applicable is readable in one place.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from trustlab.errors import ConfigError
from trustlab.files import MAX_TEXT_BYTES, parse_yaml, read_text

RADIOS = {"ble", "wifi", "lora", "zigbee", "thread", "nfc", "cellular"}


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(resources.files("trustlab.tinyml").joinpath("profile.schema.json").read_text())


def _schema_at(path: list) -> dict:
    node = schema()
    for part in path:
        node = node.get("properties", {}).get(part, node.get("items", {})) if isinstance(part, str) else node.get("items", {})
    return node


def _message(err) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    if err.validator == "additionalProperties":
        known = list(_schema_at(list(err.absolute_path)).get("properties", {}))
        extra = sorted(set(err.instance) - set(known))
        hints = []
        for name in extra:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        prefix = f"{where}: " if err.absolute_path else ""
        return f"{prefix}unknown field {', '.join(hints)}; known fields: {', '.join(known)}"
    if err.validator == "required":
        return f"{where}: {err.message.replace(' is a required property', '')} is required"
    if err.validator in ("exclusiveMinimum", "minimum"):
        return f"{where}: {err.instance!r} is impossible, it must be {'>' if err.validator == 'exclusiveMinimum' else '>='} {err.validator_value}"
    if err.validator == "enum":
        return f"{where}: {err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
    if err.validator == "type":
        return f"{where}: expected {err.validator_value}, got {err.instance!r}"
    return f"{where}: {err.message}"


def validate(doc: Any, source: str = "profile") -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(f"{source}: {_message(errors[0])}")


@dataclass(frozen=True)
class DeviceProfile:
    """A validated profile. ``data`` is the document; ``source`` where it came from."""

    data: dict
    source: str = "profile"

    @property
    def name(self) -> str:
        return self.data["name"]

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def free_ram_kb(self) -> float:
        return self.get("memory.ram_kb") - self.get("memory.ram_used_kb", 0)

    def free_flash_kb(self) -> float:
        return self.get("memory.flash_kb") - self.get("memory.flash_used_kb", 0)


def parse_profile(text: str, source: str = "profile") -> DeviceProfile:
    if len(text) > MAX_TEXT_BYTES:
        raise ConfigError(f"{source}: {len(text):,} characters, more than a profile may have ({MAX_TEXT_BYTES:,})")
    doc = parse_yaml(text, source, finite=True)
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: a profile is a mapping of fields (name, processor, memory, ...), not {type(doc).__name__}")
    validate(doc, source)
    if doc["memory"].get("ram_used_kb", 0) > doc["memory"]["ram_kb"]:
        raise ConfigError(f"{source}: memory.ram_used_kb is larger than memory.ram_kb")
    if doc["memory"].get("flash_used_kb", 0) > doc["memory"]["flash_kb"]:
        raise ConfigError(f"{source}: memory.flash_used_kb is larger than memory.flash_kb")
    return DeviceProfile(doc, source)


def example_profiles() -> dict[str, Path]:
    """Shipped profiles of real boards, by short name (file stem)."""
    folder = resources.files("trustlab.tinyml").joinpath("profiles")
    return {p.name[: -len(".yaml")]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def load_profile(path_or_name: str | Path) -> DeviceProfile:
    """Load a profile file (YAML or JSON), or a shipped example by name (e.g. ``esp32-s3``)."""
    path = Path(path_or_name)
    if not path.exists():
        examples = example_profiles()
        if str(path_or_name) in examples:
            path = examples[str(path_or_name)]
        else:
            raise ConfigError(f"profile {path_or_name} not found: give a YAML/JSON file or one of {', '.join(sorted(examples))}")
    return parse_profile(read_text(path, "profile"), str(path))


# -- conditions the attack catalog refers to ---------------------------------------------
CONDITIONS: dict[str, tuple[str, Callable[[DeviceProfile], bool]]] = {
    "on_device_model": ("the device runs ML inference itself", lambda p: bool(p.get("model.on_device"))),
    "query_interface": ("someone other than the owner can send inputs and read outputs",
                        lambda p: p.get("model.query_interface", "none") != "none"),
    "network_queries": ("inputs/outputs are reachable over a network", lambda p: p.get("model.query_interface") == "network"),
    "debug_port_open": ("a JTAG/SWD/bootloader debug port is left enabled",
                        lambda p: bool(p.get("debug.ports")) and bool(p.get("debug.enabled"))),
    "debug_port_present": ("the chip has a debug port (even if locked)", lambda p: bool(p.get("debug.ports"))),
    "no_readout_protection": ("flash readout protection is off", lambda p: not p.get("debug.readout_protection")),
    "readout_protection": ("flash readout protection is on", lambda p: bool(p.get("debug.readout_protection"))),
    "ota_updates": ("firmware is updated over the air", lambda p: bool(p.get("updates.ota"))),
    "unsigned_updates": ("updates are not signature-checked", lambda p: not p.get("updates.signed")),
    "no_secure_boot": ("the boot chain does not verify firmware", lambda p: not p.get("security.secure_boot")),
    "unverified_weights": ("model weights are neither signed nor covered by secure boot",
                           lambda p: not p.get("model.weights_signed") and not p.get("security.secure_boot")),
    "no_memory_isolation": ("no MMU, and no TrustZone to isolate the model from other code",
                            lambda p: not p.get("processor.mmu") and not p.get("security.trustzone")),
    "external_input": ("the device parses data from a radio, network or wired bus",
                       lambda p: bool(set(p.get("connectivity", [])) - {"usb"})),
    "trained_on_device": ("the model learns from data collected in the field", lambda p: bool(p.get("model.trained_on_device"))),
    "trustzone_available": ("the processor has TrustZone", lambda p: bool(p.get("security.trustzone"))),
    "mpu_available": ("the processor has a memory-protection unit", lambda p: bool(p.get("processor.mpu"))),
}


def holds(profile: DeviceProfile, condition: str) -> bool:
    if condition not in CONDITIONS:
        raise ConfigError(f"unknown profile condition '{condition}': known are {', '.join(CONDITIONS)}")
    return CONDITIONS[condition][1](profile)
