"""scanstream.engine.config: the TOML deployment configuration; errors name the bad key, never a key's value."""
from __future__ import annotations

import re
import textwrap
import tomllib
from pathlib import Path
from string import Template

import pytest

from scanstream.engine import config as config_mod
from scanstream.engine.config import ConfigError
from scanstream.engine.keys import KeyTable

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "config" / "local.toml"

# A distinctive key: if it shows up in any message, the test sees it.
SECRET_HEX = "5ec2e7a15ec2e7a15ec2e7a15ec2e7a1"
SECRET = bytes.fromhex(SECRET_HEX)
OTHER_HEX = "0badc0de0badc0de0badc0de0badc0de"


def secret_forms(*hexes: str) -> list[str]:
    """Every printable form a leaked key (or a bad key value) could take."""
    forms = []
    for h in hexes:
        forms += [h, h.upper(), h[:16], h[16:]]
        try:
            forms.append(repr(bytes.fromhex(h))[2:-1])
        except ValueError:
            pass
    return forms


def assert_no_secret(text: str, *hexes: str) -> None:
    for form in secret_forms(SECRET_HEX, *hexes):
        assert form not in text, f"key material {form!r} appears in {text!r}"


def write(tmp_path: Path, body: str, name: str = "scanstream.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    return info.value


# --- the shipped configuration ----------------------------------------------------------------

def test_local_toml_loads():
    cfg = config_mod.load(LOCAL)
    assert sorted(cfg.tenants) == [1, 7, 65535]
    assert cfg.tenants[7].name == "Demo Brewery"
    assert cfg.tenants[7].id == 7
    assert cfg.keys.pairs() == [(1, 0), (7, 0), (7, 1), (65535, 0)]
    assert [k for t, k in cfg.keys.pairs() if t == 7] == [0, 1]
    assert cfg.keys.get(7, 0) == bytes(range(16))
    assert cfg.keys.get(7, 1) == bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f")
    assert cfg.keys.get(7, 2) is None
    assert isinstance(cfg.keys, KeyTable)
    assert cfg.source == LOCAL.resolve()


def test_default_path_and_env_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(config_mod.CONFIG_ENV, raising=False)
    monkeypatch.chdir(REPO)
    assert sorted(config_mod.load().tenants) == [1, 7, 65535]
    other = write(tmp_path, f"""
        [[tenants]]
        id = 3
        keys = [{{ key_id = 2, hex = "{SECRET_HEX}" }}]
    """)
    monkeypatch.setenv(config_mod.CONFIG_ENV, str(other))
    cfg = config_mod.load()
    assert list(cfg.tenants) == [3]
    assert cfg.tenants[3].name == "tenant 3"
    assert cfg.keys.get(3, 2) == SECRET


def test_missing_file_names_it(tmp_path):
    err = load_error(tmp_path / "nope.toml")
    assert "nope.toml" in str(err)


def test_invalid_toml(tmp_path):
    err = load_error(write(tmp_path, "tenants = [\n"))
    assert "not valid TOML" in str(err)


# --- errors name the key ----------------------------------------------------------------------

def _tenant(body_keys: str, tid: str = "7", extra: str = "") -> str:
    return f"""
        [[tenants]]
        id = {tid}
        name = "T"
        {extra}
        keys = [{body_keys}]
    """


ERROR_CASES = {
    "no_tenants_key": ("", "tenants"),
    "only_other_key": ("title = 'x'\n", "tenants"),
    "empty_tenants": ("tenants = []\n", "tenants"),
    "tenant_id_too_big": (_tenant(f'{{ key_id = 0, hex = "{SECRET_HEX}" }}', tid="65536"), "tenants[0].id"),
    "tenant_id_negative": (_tenant(f'{{ key_id = 0, hex = "{SECRET_HEX}" }}', tid="-1"), "tenants[0].id"),
    "tenant_id_string": (_tenant(f'{{ key_id = 0, hex = "{SECRET_HEX}" }}', tid='"7"'), "tenants[0].id"),
    "tenant_id_missing": ("""
        [[tenants]]
        keys = [{ key_id = 0, hex = "%s" }]
    """ % SECRET_HEX, "tenants[0].id"),
    "no_keys": (_tenant(""), "tenants[0].keys"),
    "key_31_hex_digits": (_tenant(f'{{ key_id = 0, hex = "{SECRET_HEX[:31]}" }}'), "tenants[0].keys[0].hex"),
    "key_30_hex_digits": (_tenant(f'{{ key_id = 0, hex = "{SECRET_HEX[:30]}" }}'), "tenants[0].keys[0].hex"),
    "key_34_hex_digits": (_tenant(f'{{ key_id = 0, hex = "{SECRET_HEX}ab" }}'), "tenants[0].keys[0].hex"),
    "key_non_hex": (_tenant(f'{{ key_id = 0, hex = "{SECRET_HEX[:31]}g" }}'), "tenants[0].keys[0].hex"),
    "key_id_out_of_range": (_tenant(f'{{ key_id = 4, hex = "{SECRET_HEX}" }}'), "tenants[0].keys[0].key_id"),
    "key_id_missing": (_tenant(f'{{ hex = "{SECRET_HEX}" }}'), "tenants[0].keys[0].key_id"),
    "two_sources": (_tenant(f'{{ key_id = 0, hex = "{SECRET_HEX}", env = "SCANSTREAM_TEST_KEY" }}'),
                    "tenants[0].keys[0]"),
    "three_sources": (_tenant(f'{{ key_id = 0, hex = "{SECRET_HEX}", env = "X", file = "k.hex" }}'),
                      "tenants[0].keys[0]"),
    "no_source": (_tenant("{ key_id = 0 }"), "tenants[0].keys[0]"),
    "unknown_top_level": ("colour = 'blue'\n" + _tenant(f'{{ key_id = 0, hex = "{SECRET_HEX}" }}'), "colour"),
    "unknown_in_tenant": (_tenant(f'{{ key_id = 0, hex = "{SECRET_HEX}" }}', extra='nmae = "typo"'),
                          "tenants[0].nmae"),
    "unknown_in_key": (_tenant(f'{{ key_id = 0, hex = "{SECRET_HEX}", comment = "old" }}'),
                       "tenants[0].keys[0].comment"),
    "duplicate_tenant": (_tenant(f'{{ key_id = 0, hex = "{SECRET_HEX}" }}')
                         + _tenant(f'{{ key_id = 0, hex = "{OTHER_HEX}" }}'), "tenants[1].id"),
    "duplicate_key_id": (_tenant(f'{{ key_id = 1, hex = "{SECRET_HEX}" }}, {{ key_id = 1, hex = "{OTHER_HEX}" }}'),
                         "tenants[0].keys[1].key_id"),
    "missing_env_var": (_tenant('{ key_id = 0, env = "SCANSTREAM_TEST_NO_SUCH_VAR" }'), "tenants[0].keys[0].env"),
    "missing_key_file": (_tenant('{ key_id = 0, file = "no-such.hex" }'), "tenants[0].keys[0].file"),
}


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_error_names_the_key_and_hides_the_secret(name, tmp_path, monkeypatch):
    monkeypatch.delenv("SCANSTREAM_TEST_NO_SUCH_VAR", raising=False)
    monkeypatch.setenv("SCANSTREAM_TEST_KEY", SECRET_HEX)
    body, key_path = ERROR_CASES[name]
    err = load_error(write(tmp_path, body))
    message = str(err)
    # the message starts with the full path of the bad key, followed by ':' or a note in parentheses
    assert re.match(re.escape(key_path) + r"[: ]", message), f"{key_path!r} does not lead {message!r}"
    assert_no_secret(message, OTHER_HEX, SECRET_HEX[:31], SECRET_HEX[:30])
    assert_no_secret(repr(err), OTHER_HEX, SECRET_HEX[:31], SECRET_HEX[:30])


def test_error_messages_say_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.delenv("SCANSTREAM_TEST_NO_SUCH_VAR", raising=False)

    def msg(name):
        return str(load_error(write(tmp_path, ERROR_CASES[name][0], name=f"{name}.toml")))

    assert "65536" in msg("tenant_id_too_big") and "65535" in msg("tenant_id_too_big")
    assert "32 hex digits" in msg("key_30_hex_digits")
    assert "32 hex digits" in msg("key_31_hex_digits")
    assert "32 hex digits" in msg("key_non_hex")
    assert "hex" in msg("two_sources") and "env" in msg("two_sources")
    assert "unknown key" in msg("unknown_top_level")
    assert "configured twice" in msg("duplicate_tenant") and "7" in msg("duplicate_tenant")
    assert "configured twice" in msg("duplicate_key_id")
    assert "SCANSTREAM_TEST_NO_SUCH_VAR" in msg("missing_env_var")
    assert "required" in msg("no_tenants_key")


def test_31_hex_digits_message_is_accurate(tmp_path):
    message = str(load_error(write(tmp_path, ERROR_CASES["key_31_hex_digits"][0])))
    assert "other characters" not in message


@pytest.mark.parametrize("value", ["0x5ec2e7a15ec2e7a1", "[94, 194, 231, 161, 94, 194, 231, 161]"])
def test_non_string_hex_value_is_not_printed(tmp_path, value):
    err = load_error(write(tmp_path, _tenant(f"{{ key_id = 0, hex = {value} }}")))
    message = str(err)
    assert message.startswith("tenants[0].keys[0].hex")
    assert str(0x5EC2E7A15EC2E7A1) not in message
    assert "94, 194, 231, 161" not in message


# --- key sources ------------------------------------------------------------------------------

def test_env_source(tmp_path, monkeypatch):
    monkeypatch.setenv("SCANSTREAM_TEST_KEY", "  " + SECRET_HEX.upper() + "\n")
    cfg = config_mod.load(write(tmp_path, _tenant('{ key_id = 3, env = "SCANSTREAM_TEST_KEY" }')))
    assert cfg.keys.get(7, 3) == SECRET
    assert cfg.keys.pairs() == [(7, 3)]


def test_env_source_bad_value_names_variable_not_value(tmp_path, monkeypatch):
    monkeypatch.setenv("SCANSTREAM_TEST_KEY", SECRET_HEX[:31] + "z")
    err = load_error(write(tmp_path, _tenant('{ key_id = 0, env = "SCANSTREAM_TEST_KEY" }')))
    assert "tenants[0].keys[0].env" in str(err)
    assert "SCANSTREAM_TEST_KEY" in str(err)
    assert_no_secret(str(err), SECRET_HEX[:31] + "z")


def test_missing_env_var_names_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SCANSTREAM_TEST_ABSENT", raising=False)
    err = load_error(write(tmp_path, _tenant('{ key_id = 0, env = "SCANSTREAM_TEST_ABSENT" }')))
    assert str(err).startswith("tenants[0].keys[0].env")
    assert "SCANSTREAM_TEST_ABSENT" in str(err)


def test_missing_key_file_names_key_and_file(tmp_path):
    err = load_error(write(tmp_path, ERROR_CASES["missing_key_file"][0]))
    assert str(err).startswith("tenants[0].keys[0].file")
    assert "no-such.hex" in str(err)


def test_file_source_relative_to_config_folder(tmp_path, monkeypatch):
    conf_dir = tmp_path / "deploy" / "conf"
    (conf_dir / "secrets").mkdir(parents=True)
    (conf_dir / "secrets" / "t7.hex").write_text(SECRET_HEX + "\n", encoding="ascii")
    (tmp_path / "deploy" / "shared.hex").write_text(OTHER_HEX, encoding="ascii")
    path = write(conf_dir, _tenant('{ key_id = 0, file = "secrets/t7.hex" }, { key_id = 1, file = "../shared.hex" }'))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # resolving against the working directory would fail
    cfg = config_mod.load(path)
    assert cfg.keys.get(7, 0) == SECRET
    assert cfg.keys.get(7, 1) == bytes.fromhex(OTHER_HEX)
    # also when the configuration itself is named by a relative path
    monkeypatch.chdir(tmp_path)
    assert config_mod.load(Path("deploy/conf/scanstream.toml")).keys.get(7, 0) == SECRET


def test_file_source_bad_content_names_key_not_value(tmp_path):
    (tmp_path / "k.hex").write_text(SECRET_HEX[:30], encoding="ascii")
    err = load_error(write(tmp_path, _tenant('{ key_id = 0, file = "k.hex" }')))
    assert str(err).startswith("tenants[0].keys[0].file")
    assert_no_secret(str(err), SECRET_HEX[:30])


def test_several_tenants_and_keys(tmp_path):
    body = _tenant(f'{{ key_id = 0, hex = "{SECRET_HEX}" }}, {{ key_id = 3, hex = "{OTHER_HEX}" }}', tid="0") \
        + _tenant(f'{{ key_id = 0, hex = "{OTHER_HEX}" }}', tid="65535")
    cfg = config_mod.load(write(tmp_path, body))
    assert sorted(cfg.tenants) == [0, 65535]
    assert cfg.keys.pairs() == [(0, 0), (0, 3), (65535, 0)]
    assert cfg.keys.get(0, 3) == bytes.fromhex(OTHER_HEX)


# --- secrets never printed --------------------------------------------------------------------

def test_repr_of_config_and_keys_hides_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("SCANSTREAM_TEST_KEY", OTHER_HEX)
    body = _tenant(f'{{ key_id = 0, hex = "{SECRET_HEX}" }}, {{ key_id = 1, env = "SCANSTREAM_TEST_KEY" }}')
    cfg = config_mod.load(write(tmp_path, body))
    assert cfg.keys.get(7, 0) == SECRET  # the key is really in there
    for text in (repr(cfg), str(cfg), repr(cfg.keys), str(cfg.keys), repr(cfg.tenants)):
        assert_no_secret(text, OTHER_HEX)
    assert "(7, 0)" in repr(cfg.keys) and "(7, 1)" in repr(cfg.keys)


def test_repr_of_local_config_hides_test_keys():
    cfg = config_mod.load(LOCAL)
    for text in (repr(cfg), repr(cfg.keys)):
        for h in ("000102030405060708090a0b0c0d0e0f", "f0e1d2c3b4a5968778695a4b3c2d1e0f"):
            assert h not in text and h.upper() not in text
            assert repr(bytes.fromhex(h))[2:-1] not in text


def test_production_example_validates(monkeypatch):
    """config/production.toml is a working template: with its secrets in the environment it loads."""
    monkeypatch.setenv("SCANSTREAM_KEY_7_0", "00" * 16)
    monkeypatch.setenv("SCANSTREAM_KEY_7_1", "11" * 16)
    monkeypatch.setenv("SCANSTREAM_SEED_WINTER_2026", "a seed")
    config = config_mod.load(Path(__file__).resolve().parents[1] / "config" / "production.toml")
    assert config.state_backend == "redis" and config.registry_source == "clickhouse"
    assert config.clickhouse.startswith("http://") and len(config.kafka.bootstrap.split(",")) == 3
    assert config.keys.get(7, 1) == b"\x11" * 16


# --- configuration that pays nonsense (issue 12) ----------------------------------------------
#
# Attacks first: every number the file holds, set to something no deployment means. Each case
# gives the fields of NONSENSE_BASE to override (as TOML literals), the key path that must lead
# the message, and what else the message must say (the value and the allowed range).

SEED = "seed-that-must-not-leak-4711"

NONSENSE_BASE = Template("""
    [[tenants]]
    id = 7
    keys = [{ key_id = 0, hex = "$key" }]

    [engine]
    batch_size = $batch_size
    replay_ttl_hours = $replay_ttl_hours

    [diversion]
    window_minutes = $diversion_window
    [diversion.thresholds]
    consumer = $consumer_threshold

    [clones]
    window_minutes = $clones_window
    max_users = $max_users

    [enumeration]
    window_minutes = 10
    threshold = $enumeration_threshold
    block_hours = $block_hours

    [segments]
    utc_offset_minutes = $segments_offset

    [alerts]
    timeout_s = $timeout_s
    retries = $retries
    backoff_s = $backoff_s
    digest_grace_s = $digest_grace_s

    [redis]
    result_ttl_s = $result_ttl_s

    [kafka]
    session_timeout_s = $session_timeout_s
    partitions = $partitions

    [[campaigns]]
    id = "c"
    tenant = 7
    start = $start
    end = $end
    budget_cents = $budget_cents
    daily_cap = $daily_cap
    utc_offset_minutes = $utc_offset_minutes
    seed = "$seed"
    tiers = [
      { name = "a", cents = $cents0, probability = $p0, stock = $stock0 },
      { name = "b", cents = $cents1, probability = $p1, stock = $stock1 },
    ]
""")

NONSENSE_DEFAULTS = dict(
    key=SECRET_HEX, seed=SEED, batch_size="5000", replay_ttl_hours="24", diversion_window="10",
    consumer_threshold="3", clones_window="10", max_users="3", enumeration_threshold="20", block_hours="24",
    segments_offset="480", timeout_s="5", retries="3", backoff_s="0.5", digest_grace_s="60", result_ttl_s="300",
    session_timeout_s="10", partitions="8", start="2026-11-01T00:00:00+08:00", end="2027-01-01T00:00:00+08:00",
    budget_cents="10_000_000", daily_cap="5", utc_offset_minutes="480",
    cents0="880", p0="0.2", stock0="8000", cents1="8800", p1="0.005", stock1="200",
)


def nonsense_config(tmp_path: Path, **fields: str) -> Path:
    unknown = set(fields) - set(NONSENSE_DEFAULTS)
    assert not unknown, unknown
    return write(tmp_path, NONSENSE_BASE.substitute({**NONSENSE_DEFAULTS, **fields}))


def assert_rejected(tmp_path: Path, fields: dict[str, str], key_path: str, *says: str) -> str:
    message = str(load_error(nonsense_config(tmp_path, **fields)))
    assert re.match(re.escape(key_path) + ":", message), f"{key_path!r} does not lead {message!r}"
    for text in says:
        assert text in message, f"{text!r} not in {message!r}"
    assert SEED not in message
    assert_no_secret(message)
    return message


def test_nonsense_base_loads(tmp_path):
    cfg = config_mod.load(nonsense_config(tmp_path))
    (c,) = cfg.campaigns
    assert [t.probability for t in c.tiers] == [0.2, 0.005]
    assert c.end_ms - c.start_ms == 61 * 86_400_000


TIER_P = "> 0 and <= 1"

NOT_FINITE = {
    "probability_nan": ({"p0": "nan"}, "campaigns[0].tiers[0].probability", "nan", TIER_P),
    "second_probability_nan": ({"p1": "nan"}, "campaigns[0].tiers[1].probability", "nan", TIER_P),
    "probability_negative_nan": ({"p1": "-nan"}, "campaigns[0].tiers[1].probability", "nan", TIER_P),
    "probability_inf": ({"p0": "inf"}, "campaigns[0].tiers[0].probability", "inf", TIER_P),
    "probability_minus_inf": ({"p0": "-inf"}, "campaigns[0].tiers[0].probability", "-inf", TIER_P),
    "probability_overflow_to_inf": ({"p0": "1e400"}, "campaigns[0].tiers[0].probability", "inf", TIER_P),
    "timeout_nan": ({"timeout_s": "nan"}, "alerts.timeout_s", "nan", "0.1..120"),
    "timeout_inf": ({"timeout_s": "inf"}, "alerts.timeout_s", "inf", "0.1..120"),
    "backoff_nan": ({"backoff_s": "nan"}, "alerts.backoff_s", "nan", "0..60"),
    "backoff_minus_inf": ({"backoff_s": "-inf"}, "alerts.backoff_s", "-inf", "0..60"),
    "session_timeout_nan": ({"session_timeout_s": "nan"}, "kafka.session_timeout_s", "nan", "1..300"),
    "session_timeout_inf": ({"session_timeout_s": "+inf"}, "kafka.session_timeout_s", "inf", "1..300"),
    "nan_for_an_integer": ({"budget_cents": "nan"}, "campaigns[0].budget_cents", "expected an integer, got nan", "0..9007199254740991"),
    "inf_for_an_integer": ({"retries": "inf"}, "alerts.retries", "expected an integer, got inf", "0..20"),
}


@pytest.mark.parametrize("name", list(NOT_FINITE))
def test_nan_and_infinities_are_rejected(name, tmp_path):
    fields, key_path, *says = NOT_FINITE[name]
    message = assert_rejected(tmp_path, fields, key_path, *says)
    if "integer" not in name:
        assert "not a finite number" in message


PROBABILITY = {
    "negative": ({"p0": "-0.1"}, "campaigns[0].tiers[0].probability", "-0.1 out of range"),
    "minus_zero": ({"p0": "-0.0"}, "campaigns[0].tiers[0].probability", "out of range"),
    "zero": ({"p1": "0"}, "campaigns[0].tiers[1].probability", "0 out of range"),
    "above_one": ({"p1": "1.5"}, "campaigns[0].tiers[1].probability", "1.5 out of range"),
    "just_above_one": ({"p0": "1.000001", "p1": "0.000001"}, "campaigns[0].tiers[0].probability", "out of range"),
    "huge": ({"p0": "1e300"}, "campaigns[0].tiers[0].probability", "1e+300 out of range"),
    "integer_two": ({"p0": "2"}, "campaigns[0].tiers[0].probability", "2 out of range"),
}


@pytest.mark.parametrize("name", list(PROBABILITY))
def test_tier_probability_outside_0_1_is_rejected(name, tmp_path):
    fields, key_path, says = PROBABILITY[name]
    assert_rejected(tmp_path, fields, key_path, says, TIER_P)


@pytest.mark.parametrize(("p0", "p1", "total"), [
    ("0.6", "0.5", "1.1"),
    ("1", "1", "2"),
    ("0.9", "0.100001", "1"),  # shown rounded, but over by 1e-6: far past the tolerance
])
def test_tier_probabilities_adding_up_past_one_are_rejected(p0, p1, total, tmp_path):
    message = assert_rejected(tmp_path, {"p0": p0, "p1": p1}, "campaigns[0].tiers", f"add up to {total}",
                              "expected a sum <= 1")
    assert "tiers[" not in message.split(":")[0]


@pytest.mark.parametrize(("p0", "p1"), [("0.7", "0.3"), ("0.1", "0.9"), ("0.5", "0.5000000000001"), ("1", "1e-12")])
def test_tier_probabilities_adding_up_to_one_within_tolerance_load(p0, p1, tmp_path):
    (c,) = config_mod.load(nonsense_config(tmp_path, p0=p0, p1=p1)).campaigns
    assert c.cumulative()[-1] <= 1 + 1e-9


MONEY_AND_COUNTS = {
    "negative_cents": ({"cents0": "-880"}, "campaigns[0].tiers[0].cents", "-880 out of range", "1..4294967295"),
    "zero_cents": ({"cents1": "0"}, "campaigns[0].tiers[1].cents", "0 out of range", "1..4294967295"),
    "cents_past_uint32": ({"cents1": "4294967296"}, "campaigns[0].tiers[1].cents", "4294967296 out of range",
                          "1..4294967295"),
    "fractional_cents": ({"cents0": "8.8"}, "campaigns[0].tiers[0].cents", "expected an integer, got 8.8",
                         "1..4294967295"),
    "negative_stock": ({"stock1": "-1"}, "campaigns[0].tiers[1].stock", "-1 out of range", "0..9007199254740991"),
    "stock_past_lua_doubles": ({"stock0": "9007199254740992"}, "campaigns[0].tiers[0].stock", "out of range",
                               "0..9007199254740991"),
    "negative_budget": ({"budget_cents": "-1"}, "campaigns[0].budget_cents", "-1 out of range",
                        "0..9007199254740991"),
    "budget_past_lua_doubles": ({"budget_cents": "9007199254740992"}, "campaigns[0].budget_cents", "out of range",
                                "0..9007199254740991"),
    "negative_daily_cap": ({"daily_cap": "-5"}, "campaigns[0].daily_cap", "-5 out of range", "1..9007199254740991"),
    "zero_daily_cap": ({"daily_cap": "0"}, "campaigns[0].daily_cap", "0 out of range", "1..9007199254740991"),
}


@pytest.mark.parametrize("name", list(MONEY_AND_COUNTS))
def test_negative_money_and_counts_are_rejected(name, tmp_path):
    fields, key_path, *says = MONEY_AND_COUNTS[name]
    assert_rejected(tmp_path, fields, key_path, *says)


def test_zero_budget_is_allowed(tmp_path):
    """Documented choice: budget_cents >= 0; a zero budget draws and pays nothing (a campaign on hold)."""
    (c,) = config_mod.load(nonsense_config(tmp_path, budget_cents="0")).campaigns
    assert c.budget_cents == 0


def test_a_negative_guide_commission_is_refused_naming_the_key(tmp_path):
    """A commission below zero would pay the budget back from the guides: refused, with the range."""
    path = nonsense_config(tmp_path)
    path.write_text(path.read_text().replace('tenant = 7\n', 'tenant = 7\nguide_cents = -100\n'), encoding="utf-8")
    assert str(load_error(path)) == "campaigns[0].guide_cents: -100 out of range; expected an integer 0..4294967295"


START_END = {
    "end_before_start": ({"start": "2027-01-01T00:00:00+08:00", "end": "2026-11-01T00:00:00+08:00"},
                         "2026-11-01T00:00:00+08:00 is not after start 2027-01-01T00:00:00+08:00"),
    "end_equals_start": ({"end": "2026-11-01T00:00:00+08:00"}, "is not after start"),
    "same_instant_other_zone": ({"end": "2026-10-31T16:00:00Z"}, "is not after start"),
    "earlier_instant_later_clock": ({"end": "2026-11-01T01:00:00+10:00"}, "is not after start"),
    "sub_millisecond_apart": ({"end": "2026-11-01T00:00:00.0004+08:00"}, "is not after start"),
}


@pytest.mark.parametrize("name", list(START_END))
def test_campaign_must_end_after_it_starts(name, tmp_path):
    fields, says = START_END[name]
    assert_rejected(tmp_path, fields, "campaigns[0].end", says, "expected end > start")


def test_campaign_one_millisecond_long_loads(tmp_path):
    (c,) = config_mod.load(nonsense_config(tmp_path, end="2026-11-01T00:00:00.001+08:00")).campaigns
    assert c.end_ms - c.start_ms == 1
    assert c.start_ms == 1_793_462_400_000


ZONES = {
    "start_offset_23h59": ({"start": "2026-11-01T00:00:00+23:59"}, "campaigns[0].start", "+23:59",
                           "-12:00..+14:00"),
    "start_offset_minus_13h": ({"start": "2026-11-01T00:00:00-13:00"}, "campaigns[0].start", "-13:00",
                               "-12:00..+14:00"),
    "end_offset_plus_14h01": ({"end": "2027-01-01T00:00:00+14:01"}, "campaigns[0].end", "+14:01", "-12:00..+14:00"),
    "start_without_zone": ({"start": "2026-11-01T00:00:00"}, "campaigns[0].start", "with a zone",
                           "2026-01-01T00:00:00+08:00"),
    "end_a_date": ({"end": "2027-01-01"}, "campaigns[0].end", "with a zone", "2026-01-01T00:00:00+08:00"),
    "start_a_number": ({"start": "1761926400000"}, "campaigns[0].start", "with a zone", "1761926400000"),
    "campaign_offset_15h": ({"utc_offset_minutes": "900"}, "campaigns[0].utc_offset_minutes", "900 out of range",
                            "-720..840"),
    "campaign_offset_minus_13h": ({"utc_offset_minutes": "-780"}, "campaigns[0].utc_offset_minutes",
                                  "-780 out of range", "-720..840"),
    "campaign_offset_not_quarter_hours": ({"utc_offset_minutes": "481"}, "campaigns[0].utc_offset_minutes",
                                          "481 (UTC+08:01)", "multiple of 15 minutes in -720..840"),
    "campaign_offset_fractional": ({"utc_offset_minutes": "480.5"}, "campaigns[0].utc_offset_minutes",
                                   "expected an integer", "-720..840"),
    "segments_offset_minus_15h": ({"segments_offset": "-900"}, "segments.utc_offset_minutes", "-900 out of range",
                                  "-720..840"),
    "segments_offset_not_quarter_hours": ({"segments_offset": "-1"}, "segments.utc_offset_minutes", "-1 (UTC-00:01)",
                                          "multiple of 15 minutes"),
}


@pytest.mark.parametrize("name", list(ZONES))
def test_unknown_zones_and_offsets_are_rejected(name, tmp_path):
    fields, key_path, *says = ZONES[name]
    assert_rejected(tmp_path, fields, key_path, *says)


@pytest.mark.parametrize(("start", "end", "offset"), [
    ("2026-11-01T00:00:00-12:00", "2027-01-01T00:00:00+14:00", "-720"),
    ("2026-11-01T00:00:00+05:45", "2027-01-01T00:00:00Z", "345"),  # Nepal
    ("2026-11-01T00:00:00+08:45", "2027-01-01T00:00:00-09:30", "840"),
])
def test_real_zones_and_offsets_load(start, end, offset, tmp_path):
    (c,) = config_mod.load(nonsense_config(tmp_path, start=start, end=end, utc_offset_minutes=offset)).campaigns
    assert c.utc_offset_minutes == int(offset)


TYPES_AND_SIZES = {
    "probability_true": ({"p0": "true"}, "campaigns[0].tiers[0].probability", "got the boolean true", TIER_P),
    "cents_true": ({"cents0": "true"}, "campaigns[0].tiers[0].cents", "got the boolean true", "1..4294967295"),
    "stock_false": ({"stock1": "false"}, "campaigns[0].tiers[1].stock", "got the boolean false", "0..9007199254740991"),
    "budget_true": ({"budget_cents": "true"}, "campaigns[0].budget_cents", "got the boolean true", "0..9007199254740991"),
    "daily_cap_true": ({"daily_cap": "true"}, "campaigns[0].daily_cap", "got the boolean true", "1..9007199254740991"),
    "timeout_true": ({"timeout_s": "true"}, "alerts.timeout_s", "got the boolean true", "0.1..120"),
    "batch_size_true": ({"batch_size": "true"}, "engine.batch_size", "got the boolean true", "1..1000000"),
    "offset_true": ({"utc_offset_minutes": "true"}, "campaigns[0].utc_offset_minutes", "got the boolean true",
                    "-720..840"),
    "probability_string": ({"p0": '"0.2"'}, "campaigns[0].tiers[0].probability", "got '0.2'", TIER_P),
    "budget_2_to_the_63": ({"budget_cents": "9223372036854775808"}, "campaigns[0].budget_cents",
                           "an integer of 64 bits does not fit in 64 bits", "0..9007199254740991"),
    "stock_2_to_the_64": ({"stock0": "18446744073709551616"}, "campaigns[0].tiers[0].stock",
                          "an integer of 65 bits does not fit in 64 bits", "0..9007199254740991"),
    "daily_cap_below_int64": ({"daily_cap": "-9223372036854775809"}, "campaigns[0].daily_cap", "does not fit in 64 bits",
                              "1..9007199254740991"),
    "cents_100_digits": ({"cents1": "9" * 100}, "campaigns[0].tiers[1].cents", "does not fit in 64 bits",
                         "1..4294967295"),
    "retries_huge": ({"retries": "99999999999999999999"}, "alerts.retries", "does not fit in 64 bits", "0..20"),
    "probability_huge_integer": ({"p0": "1" + "0" * 400}, "campaigns[0].tiers[0].probability",
                                 "does not fit in 64 bits", TIER_P),
}


@pytest.mark.parametrize("name", list(TYPES_AND_SIZES))
def test_booleans_and_integers_past_64_bits_are_rejected(name, tmp_path):
    fields, key_path, *says = TYPES_AND_SIZES[name]
    assert_rejected(tmp_path, fields, key_path, *says)


def test_integer_too_long_to_print_is_a_config_error(tmp_path):
    """Python refuses to convert ints of more than 4300 digits: still a ConfigError, not a crash."""
    message = str(load_error(nonsense_config(tmp_path, budget_cents="9" * 5000)))
    assert "not valid TOML" in message
    cfg_dict = tomllib.loads(nonsense_config(tmp_path).read_text())
    cfg_dict["campaigns"][0]["budget_cents"] = 10 ** 5000  # parse() of an in-memory document
    with pytest.raises(ConfigError, match=r"^campaigns\[0\]\.budget_cents: an integer of 16610 bits does not fit"):
        config_mod.parse(cfg_dict, tmp_path / "x.toml")


OTHER_SETTINGS = {
    "batch_size_negative": ({"batch_size": "-1"}, "engine.batch_size", "-1 out of range", "1..1000000"),
    "batch_size_zero": ({"batch_size": "0"}, "engine.batch_size", "0 out of range", "1..1000000"),
    "replay_ttl_zero": ({"replay_ttl_hours": "0"}, "engine.replay_ttl_hours", "0 out of range", "1..8760"),
    "replay_ttl_negative": ({"replay_ttl_hours": "-24"}, "engine.replay_ttl_hours", "-24 out of range", "1..8760"),
    "diversion_window_zero": ({"diversion_window": "0"}, "diversion.window_minutes", "0 out of range", "1..10080"),
    "diversion_window_negative": ({"diversion_window": "-10"}, "diversion.window_minutes", "-10 out of range",
                                  "1..10080"),
    "clones_window_zero": ({"clones_window": "0"}, "clones.window_minutes", "0 out of range", "1..10080"),
    "threshold_zero": ({"consumer_threshold": "0"}, "diversion.thresholds.consumer", "0 out of range", ">= 1"),
    "threshold_negative": ({"consumer_threshold": "-3"}, "diversion.thresholds.consumer", "-3 out of range", ">= 1"),
    "max_users_zero": ({"max_users": "0"}, "clones.max_users", "0 out of range", ">= 1"),
    "enumeration_threshold_one": ({"enumeration_threshold": "1"}, "enumeration.threshold", "1 out of range", ">= 2"),
    "block_hours_zero": ({"block_hours": "0"}, "enumeration.block_hours", "0 out of range", "1..8760"),
    "timeout_negative": ({"timeout_s": "-1"}, "alerts.timeout_s", "-1 out of range", "0.1..120"),
    "timeout_zero": ({"timeout_s": "0.0"}, "alerts.timeout_s", "0.0 out of range", "0.1..120"),
    "retries_negative": ({"retries": "-1"}, "alerts.retries", "-1 out of range", "0..20"),
    "backoff_negative": ({"backoff_s": "-0.5"}, "alerts.backoff_s", "-0.5 out of range", "0..60"),
    "digest_grace_negative": ({"digest_grace_s": "-60"}, "alerts.digest_grace_s", "-60 out of range", "0..86400"),
    "result_ttl_zero": ({"result_ttl_s": "0"}, "redis.result_ttl_s", "0 out of range", "1..86400"),
    # the outcomes are found through the identities, kept for replay_ttl_hours: a reply that outlived
    # them would be unreadable
    "result_ttl_past_the_identities": ({"result_ttl_s": "86400", "replay_ttl_hours": "24"}, "redis.result_ttl_s",
                                       "86400 s would outlive the identities", "at most half", "43200 s"),
    "session_timeout_zero": ({"session_timeout_s": "0"}, "kafka.session_timeout_s", "0 out of range", "1..300"),
    "partitions_negative": ({"partitions": "-8"}, "kafka.partitions", "-8 out of range", "1..10000"),
}


@pytest.mark.parametrize("name", list(OTHER_SETTINGS))
def test_other_numeric_nonsense_is_rejected(name, tmp_path):
    fields, key_path, *says = OTHER_SETTINGS[name]
    assert_rejected(tmp_path, fields, key_path, *says)


def test_shipped_configs_still_load(monkeypatch):
    monkeypatch.setenv("SCANSTREAM_KEY_7_0", "00" * 16)
    monkeypatch.setenv("SCANSTREAM_KEY_7_1", "11" * 16)
    monkeypatch.setenv("SCANSTREAM_SEED_WINTER_2026", "a seed")
    for path in (LOCAL, REPO / "config" / "production.toml"):
        cfg = config_mod.load(path)
        c = cfg.campaigns[0]
        assert c.id == "winter-2026" and c.budget_cents == 10_000_000 and c.daily_cap == 5
        assert c.roles == ("consumer",) and c.kinds == (0,)
        assert [t.probability for t in c.tiers] == [0.20, 0.05, 0.005, 0.001]
        assert c.start_ms == 1_793_462_400_000 and c.end_ms == 1_798_732_800_000
        assert c.utc_offset_minutes == 480 and cfg.segments.utc_offset_minutes == 480
        assert cfg.alerts.timeout_s == 5.0 and cfg.alerts.backoff_s == 0.5
    # the demo's 开箱有礼 campaign: store owners, case codes
    case = config_mod.load(LOCAL).campaigns[1]
    assert (case.id, case.roles, case.kinds) == ("open-case-2026", ("store",), (1,))


# --- kafka.metrics_host: where a worker's metrics listen -----------------------------------------

MINIMAL_TENANT = """
[[tenants]]
id = 7
keys = [{ key_id = 0, hex = "000102030405060708090a0b0c0d0e0f" }]
"""


def test_metrics_host_defaults_to_loopback_so_nothing_is_exposed(tmp_path):
    assert config_mod.load(write(tmp_path, MINIMAL_TENANT)).kafka.metrics_host == "127.0.0.1"
    assert config_mod.load(LOCAL).kafka.metrics_host == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.2", "::", "::1", "fe80::1", "metrics.internal", "localhost",
                                  "worker-1.prod.example.cn."])
def test_metrics_host_takes_an_address_or_a_host_name(tmp_path, host):
    path = write(tmp_path, MINIMAL_TENANT + f'[kafka]\nmetrics_host = "{host}"\n')
    assert config_mod.load(path).kafka.metrics_host == host


@pytest.mark.parametrize("host", ["", "http://0.0.0.0", "0.0.0.0:9464", "[::1]", "metrics host", "-metrics", "a..b",
                                  "256.1.1.1", "10.0.0.1.5", "x" * 64 + ".example", "ünicode.example"])
def test_metrics_host_that_is_no_host_is_rejected_naming_key_and_value(tmp_path, host):
    err = str(load_error(write(tmp_path, MINIMAL_TENANT + f'[kafka]\nmetrics_host = "{host}"\n')))
    assert err.startswith("kafka.metrics_host: ") and repr(host) in err and "expected an IP address" in err, err


def test_metrics_host_must_be_a_string(tmp_path):
    err = str(load_error(write(tmp_path, MINIMAL_TENANT + "[kafka]\nmetrics_host = 127\n")))
    assert err == "kafka.metrics_host: expected a string, got 127", err


@pytest.mark.parametrize("cid", ["c{x}", "}c", "{}"])
def test_a_campaign_id_with_a_brace_is_rejected(cid, tmp_path):
    """A campaign id is the hash tag of its Redis keys: a brace would split them over slots."""
    text = NONSENSE_BASE.substitute(NONSENSE_DEFAULTS).replace('id = "c"', f'id = "{cid}"')
    message = str(load_error(write(tmp_path, text)))
    assert message.startswith("campaigns[0].id:") and repr(cid) in message and "{ or }" in message


def test_a_cluster_prefix_with_a_brace_is_rejected_and_a_plain_one_loads(tmp_path):
    base = NONSENSE_BASE.substitute(NONSENSE_DEFAULTS)
    assert "[redis]" in base
    tagged = base.replace("[redis]", '[redis]\ncluster = true\nprefix = "ss{1}:"')
    message = str(load_error(write(tmp_path, tagged)))
    assert message.startswith("redis.prefix:") and "Redis Cluster" in message
    on_one_server = base.replace("[redis]", '[redis]\nprefix = "ss{1}:"')  # one slot for all: allowed there
    assert config_mod.load(write(tmp_path, on_one_server, "one.toml")).redis.prefix == "ss{1}:"
    plain = base.replace("[redis]", "[redis]\ncluster = true")
    assert config_mod.load(write(tmp_path, plain, "plain.toml")).redis.cluster is True
