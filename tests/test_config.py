"""engine.config: the TOML deployment configuration; errors name the bad key, never a key's value."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from engine import config as config_mod
from engine.config import ConfigError
from engine.keys import KeyTable

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
