"""IoT / EdgeML / TinyML: the device taxonomy of the TinyML security survey, as rules.

The survey (Huckelberry et al., "TinyML Security: Exploring Vulnerabilities in
Resource-Constrained Machine Learning Systems", 2024) separates three classes:

* **IoT**: connected devices that do not run ML inference themselves (they send data to
  a server that does).
* **EdgeML**: ML inference on OS-class devices — an MMU, a general-purpose OS (Linux,
  Android), memory in GBs, watts of power (phones, Raspberry Pi, Jetson). Conventional
  OS-level protections (process isolation, file permissions, disk encryption) are available.
* **TinyML**: ML inference on microcontrollers — no MMU, bare metal or an RTOS, RAM and flash
  around or below 1 MB (two to three orders of magnitude below EdgeML), power in milliwatts
  (Warden & Situnayake, *TinyML*, O'Reilly 2019; Banbury et al., "Benchmarking TinyML
  systems", 2021). No process isolation: the model, its weights and all code share one
  address space, and the device is often physically reachable.

Decision: no on-device inference → IoT; else an MMU with a rich OS → EdgeML; else TinyML.
RAM, flash and power are *supporting* criteria: reported, and flagged when they are atypical
for the class decided (e.g. an MCU with 8 MB RAM), but they do not override the architecture,
because the security properties the survey discusses follow from MMU/OS, not from size.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustlab.tinyml.profile import DeviceProfile

TINY_RAM_KB = 1024  # "around or below 1 MB"
TINY_POWER_MW = 1000  # milliwatt-class: below 1 W
EDGE_RAM_KB = 256 * 1024


@dataclass(frozen=True)
class Criterion:
    name: str
    value: str
    points_to: str
    decisive: bool


@dataclass(frozen=True)
class Classification:
    device_class: str
    criteria: tuple[Criterion, ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"class": self.device_class, "notes": list(self.notes),
                "criteria": [c.__dict__ for c in self.criteria]}


def classify(profile: DeviceProfile) -> Classification:
    on_device = bool(profile.get("model.on_device"))
    mmu = bool(profile.get("processor.mmu"))
    os_name = profile.get("processor.os")
    rich_os = os_name in ("linux", "android", "other-rich-os")
    ram = profile.get("memory.ram_kb")
    flash = profile.get("memory.flash_kb")
    power = profile.get("power.budget_mw")

    if not on_device:
        cls = "IoT"
    elif mmu and rich_os:
        cls = "EdgeML"
    else:
        cls = "TinyML"
    crit = [
        Criterion("on-device ML inference", "yes" if on_device else "no", "EdgeML/TinyML" if on_device else "IoT", True),
        Criterion("MMU", "yes" if mmu else "no", "EdgeML" if mmu else "TinyML/IoT", on_device),
        Criterion("operating system", os_name, "EdgeML" if rich_os else "TinyML/IoT", on_device),
        Criterion("RAM", f"{ram:,.0f} KB", "TinyML/IoT" if ram <= TINY_RAM_KB else ("EdgeML" if ram >= EDGE_RAM_KB else "between"), False),
        Criterion("flash / storage", f"{flash:,.0f} KB", "TinyML/IoT" if flash <= 16 * 1024 else "EdgeML", False),
    ]
    if power is not None:
        crit.append(Criterion("power budget", f"{power:,.0f} mW", "TinyML/IoT" if power < TINY_POWER_MW else "EdgeML", False))
    notes = []
    if cls == "TinyML" and ram > TINY_RAM_KB:
        notes.append(f"RAM {ram:,.0f} KB is above the ~1 MB typical of TinyML; classified by architecture (no MMU/rich OS)")
    if cls == "TinyML" and power is not None and power >= TINY_POWER_MW:
        notes.append(f"power budget {power:,.0f} mW is above the milliwatt range typical of TinyML")
    if cls == "EdgeML" and ram < EDGE_RAM_KB:
        notes.append(f"RAM {ram:,.0f} KB is small for an OS-class device")
    if mmu and not rich_os:
        notes.append("an MMU without a rich OS: protections depend on how the firmware configures it")
    return Classification(cls, tuple(crit), tuple(notes))
