import copy
import json
from pathlib import Path

import pytest
import yaml
from cvss import CVSS3, CVSS4

from trustlab.errors import ConfigError
from trustlab.tinyml import assess, classify, load_profile, render
from trustlab.tinyml.catalog import attacks, defenses
from trustlab.tinyml.profile import example_profiles, parse_profile
from trustlab.tinyml.scoring import score_vector

SARIF_SCHEMA = Path(__file__).parent / ".schemas" / "sarif-2.1.0.json"


def profile_with(name: str, **changes):
    doc = yaml.safe_load(example_profiles()[name].read_text())
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return parse_profile(yaml.safe_dump(doc), f"{name} (modified)")


@pytest.mark.parametrize("board,cls", [
    ("arduino-nano-33-ble-sense", "TinyML"), ("esp32-s3", "TinyML"), ("stm32f746-discovery", "TinyML"),
    ("raspberry-pi-4", "EdgeML"), ("jetson-nano", "EdgeML"), ("esp8266-smart-plug", "IoT")])
def test_example_boards_classify_as_documented(board, cls):
    c = classify(load_profile(board))
    assert c.device_class == cls
    assert any(k.decisive for k in c.criteria)


def test_catalog_covers_the_survey_classes():
    classes = {a.attack_class for a in attacks()}
    for needed in ("side-channel (power)", "side-channel (EM)", "side-channel (timing)", "fault injection",
                   "physical readout / debug ports", "firmware / OTA tampering", "runtime memory corruption",
                   "model extraction", "membership inference", "model inversion", "adversarial examples",
                   "poisoning / backdoors", "weight tampering / bit flips"):
        assert needed in classes
    assert {a.layer for a in attacks()} == {"hardware", "software", "model"}


def test_every_catalog_vector_scores_as_the_cvss_package():
    for a in attacks():
        s31, s40 = score_vector(a.cvss31["vector"]), score_vector(a.cvss40["vector"])
        c3 = CVSS3(a.cvss31["vector"])
        assert (s31.score, s31.severity) == (c3.scores()[0], c3.severities()[0]), a.id
        c4 = CVSS4(a.cvss40["vector"])
        assert (s40.score, s40.severity) == (c4.base_score, c4.severity), a.id
        assert a.atlas and a.owasp_ml and a.nist_ai_100_2 and a.references


@pytest.mark.parametrize("vector,score", [
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", 7.5),    # specification example (CVE-2014-0160)
    ("CVSS:3.1/AV:P/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 6.8),    # the AV:P ceiling with scope unchanged
    ("CVSS:3.1/AV:P/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 7.6),
    ("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N", 9.3),
    ("CVSS:4.0/AV:P/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N", 7.0),
    ("CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),    # 3.0, as older advisories give it
])
def test_golden_scores(vector, score):
    assert score_vector(vector).score == score


def test_a_catalog_entry_names_its_cvss_versions():
    from trustlab.tinyml.catalog import _check_attack

    entry = yaml.safe_load((Path(__file__).parents[1] / "src/trustlab/tinyml/catalog/hardware.yaml").read_text())[0]
    entry["cvss31"] = {**entry["cvss31"], "vector": entry["cvss31"]["vector"].replace("CVSS:3.1/", "CVSS:3.0/")}
    with pytest.raises(ConfigError, match=r"cvss31 must be a mapping whose vector starts with CVSS:3.1/"):
        _check_attack(entry, "catalog/hardware.yaml")


def test_removing_a_precondition_removes_the_attack():
    base = {f.attack.id for f in assess(load_profile("arduino-nano-33-ble-sense")).findings}
    assert "TL-HW-DEBUG-READOUT" in base and "TL-HW-RDP-BYPASS" not in base
    locked = assess(profile_with("arduino-nano-33-ble-sense", debug__readout_protection=True))
    ids = {f.attack.id for f in locked.findings}
    assert "TL-HW-DEBUG-READOUT" not in ids and "TL-HW-RDP-BYPASS" in ids
    assert any(a.id == "TL-HW-DEBUG-READOUT" and "flash readout protection is off" in why for a, why in locked.ruled_out)
    no_ml = assess(profile_with("arduino-nano-33-ble-sense", model={"on_device": False}))
    assert not any(f.attack.layer == "model" for f in no_ml.findings)


def test_physical_exposure_lowers_physical_attacks_only():
    public = {f.attack.id: f for f in assess(profile_with("stm32f746-discovery", physical_exposure="public")).findings}
    secured = {f.attack.id: f for f in assess(profile_with("stm32f746-discovery", physical_exposure="secured")).findings}
    assert secured["TL-HW-DEBUG-READOUT"].adjusted31.score < public["TL-HW-DEBUG-READOUT"].adjusted31.score
    assert secured["TL-ML-EXTRACT"].adjusted31.score == public["TL-ML-EXTRACT"].adjusted31.score
    assert secured["TL-HW-DEBUG-READOUT"].base31 == public["TL-HW-DEBUG-READOUT"].base31


def test_encrypted_weights_and_label_only_outputs_lower_scores():
    plain = {f.attack.id: f for f in assess(load_profile("esp32-s3")).findings}
    safer = {f.attack.id: f for f in assess(profile_with("esp32-s3", model__weights_encrypted=True, model__returns="label")).findings}
    assert safer["TL-HW-DEBUG-READOUT"].adjusted31.score < plain["TL-HW-DEBUG-READOUT"].adjusted31.score
    assert safer["TL-ML-EXTRACT"].adjusted31.score < plain["TL-ML-EXTRACT"].adjusted31.score
    assert safer["TL-ML-EXTRACT"].adjusted40.score < plain["TL-ML-EXTRACT"].adjusted40.score
    # membership inference is AC:H already: CVSS is too coarse to lower it further, but the reason is shown
    assert any("label-only" in why for why in safer["TL-ML-MEMBERSHIP"].adjustments)


@pytest.mark.parametrize("board", sorted(example_profiles()))
def test_recommendations_fit_the_budget_and_reduce_risk(board):
    p = load_profile(board)
    a = assess(p)
    ram = sum(r.ram_kb for r in a.recommendations)
    flash = sum(r.flash_kb for r in a.recommendations)
    assert ram <= p.get("budget.ram_kb") + 1e-9 and flash <= p.get("budget.flash_kb") + 1e-9
    assert sum(r.defense.cpu for r in a.recommendations) <= p.get("budget.cpu_overhead") + 1e-9
    assert a.residual_risk < a.total_risk
    assert all(a.profile and a.classification.device_class in r.defense.classes for r in a.recommendations)


def test_masking_does_not_fit_a_tight_cpu_budget():
    a = assess(load_profile("arduino-nano-33-ble-sense"))
    assert any(d.id == "D-MASKING" and "cpu" in why for d, why in a.not_fitting)
    roomy = assess(profile_with("arduino-nano-33-ble-sense", budget={"ram_kb": 40, "flash_kb": 200, "cpu_overhead": 5, "energy_overhead": 5}))
    assert "D-MASKING" in {r.defense.id for r in roomy.recommendations}


def test_defense_catalog_is_consistent():
    ids = {a.id for a in attacks()}
    for d in defenses():
        assert set(d.mitigates) <= ids and all(0 < e <= 1 for e in d.mitigates.values())


def test_sarif_validates_against_the_2_1_0_schema():
    import jsonschema

    schema = json.loads(SARIF_SCHEMA.read_text())
    for board in ("esp32-s3", "jetson-nano"):
        doc = json.loads(render(assess(load_profile(board)), "sarif"))
        jsonschema.validators.validator_for(schema)(schema).validate(doc)
        results = doc["runs"][0]["results"]
        assert results and all(0 <= float(r["properties"]["security-severity"]) <= 10 for r in results)
    broken = copy.deepcopy(doc)
    broken["runs"][0]["results"][0]["level"] = "catastrophic"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validators.validator_for(schema)(schema).validate(broken)


def test_markdown_and_html_say_av_p_caps_at_medium():
    a = assess(load_profile("arduino-nano-33-ble-sense"))
    assert "caps physical-access attacks (AV:P) at 6.8 (Medium)" in render(a, "md")
    page = render(a, "html")
    assert page.startswith("<!doctype html>") and "<table>" in page and "TL-HW-DEBUG-READOUT" in page


@pytest.mark.parametrize("text,needle", [
    ("name: [unclosed", "malformed YAML"),
    ("name: x\nprocessor: {core: m0, clock_mhz: 16, mmu: false, os: none}\nmemory: {ram_kb: -4, flash_kb: 32}\n"
     "connectivity: []\ndebug: {ports: [], enabled: false, readout_protection: false}\n"
     "security: {secure_boot: false, trustzone: false}\nupdates: {ota: false, signed: false}\n"
     "physical_exposure: public\nmodel: {on_device: true}\n", "memory.ram_kb: -4 is impossible"),
])
def test_bad_profiles_name_the_problem(tmp_path, cli, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    r = cli("tinyml", "assess", str(p))
    assert r.returncode == 2 and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_mistyped_field_is_named_with_a_suggestion():
    text = example_profiles()["esp32-s3"].read_text().replace("ram_kb: 512", "ramm_kb: 512")
    with pytest.raises(ConfigError, match=r"memory: unknown field 'ramm_kb' \(did you mean 'ram_kb'\?\)"):
        parse_profile(text, "x")
    text = example_profiles()["esp32-s3"].read_text().replace("mmu: false", "mmu: maybe")
    with pytest.raises(ConfigError, match="processor.mmu: expected boolean"):
        parse_profile(text, "x")


def test_cli_score_catalog_classify(cli):
    r = cli("tinyml", "score", "CVSS:3.1/AV:P/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")
    assert r.returncode == 0 and r.stdout.startswith("6.8 Medium") and "AV:P" in r.stdout
    bad = cli("tinyml", "score", "CVSS:3.1/AV:Q/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")
    assert bad.returncode == 2 and "AV:Q" in bad.stderr
    assert cli("tinyml", "score", "CVSS:9/AV:N").returncode == 2
    cat = json.loads(cli("tinyml", "catalog", "--json").stdout)
    assert len(cat) == len(attacks())
    out = cli("tinyml", "classify", "jetson-nano", "--json")
    assert json.loads(out.stdout)["class"] == "EdgeML"


def test_assess_writes_every_format(cli, tmp_path):
    for fmt in ("md", "json", "sarif", "html"):
        out = tmp_path / f"a.{fmt}"
        r = cli("tinyml", "assess", "stm32f746-discovery", "--format", fmt, "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert out.stat().st_size > 500
    assert json.loads((tmp_path / "a.json").read_text())["classification"]["class"] == "TinyML"
    assert cli("tinyml", "assess", "stm32f746-discovery", "--format", "pdf").returncode == 2
