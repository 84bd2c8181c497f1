"""The registry as an operator meets it: the example loads, each mistake is shown at its line."""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path

import pytest

from hub.passwords import hash_password, hash_pin
from hub.problems import ConfigError, Problem
from hub.registry.model import PanelPlace, Registry, load_registry, parse_registry

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "registry.example.yaml"

# Appended after the units of a snippet, so that line numbers in a snippet start at 1.
SERVICES = """\
patrols:
  - {id: t-qiaokou-1, zone: z-qiaokou, members: [{name: "Team 1", phone: "+15550009001"}]}
police_desks:
  - {id: d-qiaokou, zones: [z-qiaokou], phone: "+15550009911"}
command:
  - {id: c-district, phone: "+15550009999"}
"""


def check(snippet: str, *, services: bool = True) -> tuple[Registry | None, str]:
    """Parse a YAML snippet; returns the registry and the problems as the operator reads them."""
    text = textwrap.dedent(snippet) + (SERVICES if services else "")
    registry, problems = parse_registry(text, "registry.yaml")
    return registry, "\n".join(problem.format() for problem in problems)


def line_of(text: str, needle: str) -> list[str]:
    """The reported lines containing needle."""
    return [line for line in text.splitlines() if needle in line]


# --- the example ---------------------------------------------------------------------------


def test_example_registry_has_no_problems() -> None:
    registry, problems = parse_registry(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert problems == []
    assert registry is not None


def test_example_registry_counts() -> None:
    registry = load_registry(EXAMPLE)
    assert registry.counts() == {
        "units": 3,
        "households": 30,
        "panels": 30,
        "patrols": 2,
        "police_desks": 2,
        "command": 1,
    }


def test_example_registry_lookups() -> None:
    registry = load_registry(EXAMPLE)

    place = registry.panel_place("p-0002-05")
    assert isinstance(place, PanelPlace)
    assert (place.unit.id, place.household.id) == ("u-0002", "h-05")
    assert registry.panel_place("p-9999-01") is None

    unit = registry.unit("u-0003")
    assert unit is not None and unit.zone == "z-jianghan"
    assert registry.unit("u-9999") is None
    household = registry.household("u-0001", "h-03")
    assert household is not None and household.panel == "p-0001-03"
    assert registry.household("u-0001", "h-99") is None

    assert registry.unit_panels("u-0001") == [f"p-0001-{n:02d}" for n in range(1, 11)]
    assert registry.unit_panels("u-9999") == []

    assert [p.id for p in registry.patrols_in_zone("z-qiaokou")] == ["t-qiaokou-1"]
    assert [d.id for d in registry.desks_for_zone("z-jianghan")] == ["d-jianghan"]
    assert registry.patrols_in_zone("z-nowhere") == []


def test_key_households_may_belong_to_a_neighbouring_unit() -> None:
    registry = load_registry(EXAMPLE)
    keys = [(unit.id, household.id) for unit, household in registry.key_households_of("u-0001")]
    assert keys == [("u-0001", "h-01"), ("u-0002", "h-03")]
    assert registry.key_households_of("u-9999") == []


def test_models_are_frozen() -> None:
    registry = load_registry(EXAMPLE)
    with pytest.raises(ValueError):
        registry.units[0].households[0].panel = "p-other"  # type: ignore[misc]


# --- cross-checks --------------------------------------------------------------------------


def test_panel_in_two_units_is_reported_where_it_is_reused() -> None:
    registry, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2"
            zone: z-qiaokou
            households:
              - {id: h-01, address: "2-101", panel: p-0001-01, phones: ["+15550000101"]}
          - id: u-0002
            name: "Block 3, Building 3"
            zone: z-qiaokou
            households:
              - {id: h-01, address: "3-101", panel: p-0001-01, phones: ["+15550000201"]}
        """
    )
    assert registry is None
    assert text == (
        "registry.yaml:11:45: error: units[1].households[0].panel: duplicate panel id "
        "'p-0001-01': it already belongs to household u-0001/h-01 (line 6): "
        "a household and its panel can be in one unit only"
    )


def test_panel_of_two_households_of_one_unit() -> None:
    _, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2"
            zone: z-qiaokou
            households:
              - {id: h-01, address: "2-101", panel: p-0001-01, phones: ["+15550000101"]}
              - {id: h-02, address: "2-102", panel: p-0001-01, phones: ["+15550000102"]}
        """
    )
    assert ":7:" in text and "duplicate panel id 'p-0001-01'" in text
    assert "household u-0001/h-01 (line 6)" in text


def test_duplicate_unit_and_household_ids() -> None:
    _, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2"
            zone: z-qiaokou
            households:
              - {id: h-01, address: "2-101", panel: p-0001-01, phones: ["+15550000101"]}
              - {id: h-01, address: "2-102", panel: p-0001-02, phones: ["+15550000102"]}
          - id: u-0001
            name: "Block 3, Building 3"
            zone: z-qiaokou
            households:
              - {id: h-01, address: "3-101", panel: p-0002-01, phones: ["+15550000201"]}
        """
    )
    assert line_of(text, "duplicate household id") == [
        "registry.yaml:7:14: error: units[0].households[1].id: "
        "duplicate household id 'h-01' in unit u-0001 (first used at line 6)"
    ]
    assert line_of(text, "duplicate unit id") == [
        "registry.yaml:8:9: error: units[1].id: duplicate unit id 'u-0001' (first used at line 2)"
    ]


def test_same_household_id_in_two_units_is_fine() -> None:
    registry, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2"
            zone: z-qiaokou
            households:
              - {id: h-01, address: "2-101", panel: p-0001-01, phones: ["+15550000101"]}
          - id: u-0002
            name: "Block 3, Building 3"
            zone: z-qiaokou
            households:
              - {id: h-01, address: "3-101", panel: p-0002-01, phones: ["+15550000201"]}
        """
    )
    assert text == ""
    assert registry is not None
    assert registry.household("u-0002", "h-01") is not None


def test_household_ids_are_local_to_their_unit() -> None:
    _, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2"
            zone: z-qiaokou
            households:
              - {id: u-0001/h-01, address: "2-101", panel: p-0001-01, phones: ["+15550000101"]}
              - {id: u-0001, address: "2-102", panel: p-0001-02, phones: ["+15550000102"]}
        """
    )
    [slash] = line_of(text, "must not contain '/'")
    assert slash.startswith("registry.yaml:6:14: error: units[0].households[0].id:")
    assert "local to their unit" in slash
    [unit_name] = line_of(text, "names unit")
    assert unit_name.startswith("registry.yaml:7:14: error: units[0].households[1].id:")


def test_key_households_must_name_existing_households() -> None:
    _, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2"
            zone: z-qiaokou
            key_households:
              - u-0001/h-01
              - u-0002/h-01
              - u-0009/h-01
              - u-0002/h-07
              - h-01
            households:
              - {id: h-01, address: "2-101", panel: p-0001-01, phones: ["+15550000101"]}
          - id: u-0002
            name: "Block 3, Building 3"
            zone: z-qiaokou
            households:
              - {id: h-01, address: "3-101", panel: p-0002-01, phones: ["+15550000201"]}
        """
    )
    assert text.splitlines() == [
        "registry.yaml:8:9: error: units[0].key_households[2]: "
        "key household 'u-0009/h-01' does not exist: there is no unit u-0009",
        "registry.yaml:9:9: error: units[0].key_households[3]: "
        "key household 'u-0002/h-07' does not exist: unit u-0002 has no household h-07",
        "registry.yaml:10:9: error: units[0].key_households[4]: "
        "'h-01' is not a household reference: write unit_id/household_id, like u-0001/h-01",
    ]


def test_duress_pin_must_differ_from_pin() -> None:
    _, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2"
            zone: z-qiaokou
            households:
              - id: h-01
                address: "2-101"
                panel: p-0001-01
                phones: ["+15550000101"]
                pin: "4821"
                duress_pin: "4821"
        """
    )
    assert text.startswith("registry.yaml:11:21: error: units[0].households[0].duress_pin:")
    assert "duress_pin is the same as pin" in text


def _household_with(pins: str) -> str:
    """A one-household unit whose household line ends with `pins` (flow-mapping keys)."""
    return f"""\
units:
  - id: u-0001
    name: "Block 3, Building 2"
    zone: z-qiaokou
    households:
      - {{id: h-01, address: "2-101", panel: p-0001-01, phones: ["+15550000101"], {pins}}}
"""


def test_pins_as_the_hub_writes_them_load_as_hashes() -> None:
    registry, text = check(
        _household_with(f'pin_hash: "{hash_pin("4821")}", duress_pin_hash: "{hash_pin("1357")}"')
    )
    assert text == "" and registry is not None
    household = registry.household("u-0001", "h-01")
    assert household is not None and household.pin is None and household.has_pin


def test_a_pin_given_twice_or_equal_to_the_duress_hash_is_refused() -> None:
    _, twice = check(_household_with(f'pin: "4821", pin_hash: "{hash_pin("4821")}"'))
    assert "error: units[0].households[0].pin_hash: pin and pin_hash both given" in twice
    _, same = check(_household_with(f'pin: "4821", duress_pin_hash: "{hash_pin("4821")}"'))
    assert "households[0].duress_pin_hash: duress_pin is the same as pin" in same


def test_a_bad_pin_or_hash_is_refused_without_showing_it() -> None:
    password_hash = hash_password("a password, not a PIN")
    for pins in (
        'pin: "48 21"',
        "pin: 98765",
        'pin_hash: "scrypt$4821"',
        f'pin_hash: "{password_hash}"',
    ):
        registry, text = check(_household_with(pins))
        assert registry is None and "error: units[0].households[0].pin" in text, text
        assert not re.search(r"4821|48 21|98765", text) and password_hash not in text, text
    assert "costs too much to check on every cancel" in text


def test_an_export_marks_pins_as_set_and_warns_it_holds_none() -> None:
    registry, text = check(_household_with("pin_set: true, duress_pin_set: true"))
    assert registry is not None
    assert text.startswith(
        "registry.yaml:6:91: warning: units[0].households[0].pin_set: household u-0001/h-01"
        " only says a PIN is set"
    )


def test_duplicate_patrol_desk_and_command_ids() -> None:
    _, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2"
            zone: z-qiaokou
            households:
              - {id: h-01, address: "2-101", panel: p-0001-01, phones: ["+15550000101"]}
        patrols:
          - {id: t-1, zone: z-qiaokou, members: [{name: "Team 1", phone: "+15550009001"}]}
          - {id: t-1, zone: z-qiaokou, members: [{name: "Team 2", phone: "+15550009002"}]}
        police_desks:
          - {id: d-1, zones: [z-qiaokou], phone: "+15550009911"}
          - {id: d-1, zones: [z-qiaokou], phone: "+15550009912"}
        command:
          - {id: c-1, phone: "+15550009998"}
          - {id: c-1, phone: "+15550009999"}
        """,
        services=False,
    )
    assert text.splitlines() == [
        "registry.yaml:9:10: error: patrols[1].id: "
        "duplicate patrol id 't-1' (first used at line 8)",
        "registry.yaml:12:10: error: police_desks[1].id: "
        "duplicate police desk id 'd-1' (first used at line 11)",
        "registry.yaml:15:10: error: command[1].id: "
        "duplicate command post id 'c-1' (first used at line 14)",
    ]


# --- field checks --------------------------------------------------------------------------


def test_unknown_key_is_an_error_listing_the_allowed_keys() -> None:
    registry, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2"
            zone: z-qiaokou
            households:
              - id: h-01
                address: "2-101"
                panel: p-0001-01
                phone: ["+15550000101"]
        """
    )
    assert registry is None
    assert line_of(text, "unknown key") == [
        "registry.yaml:9:9: error: units[0].households[0].phone: unknown key 'phone' "
        "(allowed: id, address, panel, phones, pin, duress_pin, pin_hash, duress_pin_hash,"
        " pin_set, duress_pin_set, language, dc09)"
    ]


def test_unknown_top_level_key() -> None:
    _, text = check("unit:\n  - id: u-0001\n", services=False)
    assert "registry.yaml:1:1: error: unit: unknown key 'unit' (allowed: units, patrols" in text
    assert "error: units: missing required key 'units'" in text


def test_field_values_are_explained() -> None:
    _, text = check(
        """\
        units:
          - id: U-0001
            zone: z-qiaokou
            location: {lat: 95.5, lon: 114.27}
            households:
              - {id: h-01, address: "2-101", panel: P-01, phones: ["5550000101"]}
              - {id: h-02, address: "2-102", panel: p-0001-02, phones: [+15550000102]}
              - {id: h-03, address: "2-201", panel: p-0001-03, phones: ["+15550000103"], pin: 123}
        """
    )
    assert text.splitlines() == [
        "registry.yaml:2:5: error: units[0].name: missing required key 'name'",
        "registry.yaml:2:9: error: units[0].id: "
        "'U-0001' is not a valid id: use lower-case letters, digits and '-' (1-64 characters)",
        "registry.yaml:4:21: error: units[0].location.lat: 95.5 is too large: must be at most 90",
        "registry.yaml:6:45: error: units[0].households[0].panel: "
        "'P-01' is not a valid id: use lower-case letters, digits and '-' (1-64 characters)",
        "registry.yaml:6:60: error: units[0].households[0].phones[0]: "
        "'5550000101' is not an E.164 phone number like +15550000101",
        "registry.yaml:7:65: error: units[0].households[1].phones[0]: 15550000102 must be quoted, "
        "like \"+15550000101\": without quotes YAML reads it as a number and the '+' is lost",
        "registry.yaml:8:87: error: units[0].households[2].pin: a PIN must be quoted, "
        'like "0123": without quotes YAML reads it as a number and a leading zero would be lost',
    ]


def test_a_unit_needs_households() -> None:
    _, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2"
            zone: z-qiaokou
            households: []
        """
    )
    assert text == (
        "registry.yaml:5:17: error: units[0].households: must not be empty: list at least one entry"
    )


def test_all_problems_are_reported_in_one_run() -> None:
    _, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2"
            zone: z-qiaokou
            households:
              - {id: h-01, address: "2-101", panel: p-0001-01, phones: ["+15550000101"]}
              - {id: h-02, adress: "2-102", panel: p-0001-01, phones: ["+15550000102"]}
              - {id: h-03, address: "2-201", panel: p-0001-03, phones: ["+1555"]}
        """
    )
    assert [line.split(": ")[0] for line in text.splitlines()] == [
        "registry.yaml:7:9",  # missing address
        "registry.yaml:7:20",  # unknown key 'adress'
        "registry.yaml:7:44",  # duplicate panel
        "registry.yaml:8:65",  # bad phone
    ]
    assert "missing required key 'address'" in text
    assert "unknown key 'adress'" in text
    assert "duplicate panel id 'p-0001-01'" in text
    assert "'+1555' is not an E.164 phone number" in text


# --- YAML itself ---------------------------------------------------------------------------


def test_yaml_syntax_error_has_a_line() -> None:
    registry, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2
            zone: z-qiaokou
        """,
        services=False,
    )
    assert registry is None
    assert text.startswith("registry.yaml:5:1: error: invalid YAML: ")
    assert "scanning a quoted scalar at line 3" in text


def test_tab_indentation_is_a_syntax_error() -> None:
    _, text = check("units:\n\t- id: u-0001\n", services=False)
    assert text.startswith("registry.yaml:2:1: error: invalid YAML: found character '\\t'")


def test_duplicate_mapping_keys_are_reported() -> None:
    _, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2"
            zone: z-qiaokou
            zone: z-jianghan
            households:
              - {id: h-01, address: "2-101", panel: p-0001-01, phones: ["+15550000101"]}
        """
    )
    assert line_of(text, "duplicate key") == [
        "registry.yaml:5:5: error: units[0].zone: duplicate key 'zone' (first used at line 4)"
    ]


def test_empty_file_is_an_error() -> None:
    registry, text = check("# nothing here yet\n", services=False)
    assert registry is None
    assert text == "registry.yaml: error: the registry is empty: it needs at least 'units'"


def test_a_list_instead_of_a_mapping() -> None:
    _, text = check("- u-0001\n", services=False)
    assert text == "registry.yaml:1:1: error: expected a mapping of keys to values, got a list"


# --- warnings ------------------------------------------------------------------------------


def test_warnings_do_not_block_loading() -> None:
    registry, text = check(
        """\
        units:
          - id: u-0001
            name: "Block 3, Building 2"
            zone: z-hanyang
            households:
              - {id: h-01, address: "2-101", panel: p-0001-01}
        """,
        services=False,
    )
    assert registry is not None
    assert text.splitlines() == [
        "registry.yaml:1:1: warning: command: "
        "no command post: escalations stop at the police desks",
        "registry.yaml:4:11: warning: units[0].zone: "
        "no patrol covers zone z-hanyang: alarms of unit u-0001 reach no patrol",
        "registry.yaml:4:11: warning: units[0].zone: "
        "no police desk covers zone z-hanyang: "
        "alarms of unit u-0001 cannot be escalated to the police",
        "registry.yaml:6:9: warning: units[0].households[0].phones: "
        "household u-0001/h-01 has no phones: nobody there can be called",
    ]


def test_load_registry_logs_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            units:
              - id: u-0001
                name: "Block 3, Building 2"
                zone: z-qiaokou
                households:
                  - {id: h-01, address: "2-101", panel: p-0001-01}
            """
        )
        + SERVICES,
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="hub.registry.model"):
        registry = load_registry(path)
    assert registry.counts()["households"] == 1
    assert "household u-0001/h-01 has no phones" in caplog.text


# --- files ---------------------------------------------------------------------------------


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    with pytest.raises(ConfigError) as caught:
        load_registry(path)
    assert str(caught.value) == f"{path}: error: registry file not found"


def test_load_registry_raises_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            units:
              - id: u-0001
                name: "Block 3, Building 2"
                zone: z-qiaokou
                households:
                  - {id: h-01, address: "2-101", panel: p-0001-01, phones: ["+15550000101"]}
                  - {id: h-02, address: "2-102", panel: p-0001-01, phones: ["555"]}
            """
        )
        + SERVICES,
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_registry(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{path}:7:") for line in lines)


def test_problem_format_leaves_out_unknown_parts() -> None:
    assert Problem("a.toml", None, None, "", "unreadable").format() == "a.toml: error: unreadable"
    assert Problem("a.yaml", 3, None, "x", "odd", "warning").format() == "a.yaml:3: warning: x: odd"
    assert Problem("a.yaml", 3, 9, "x.y", "bad").format() == "a.yaml:3:9: error: x.y: bad"
