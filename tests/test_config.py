"""
Configuration keys are declared once: reading, refusing unknown keys, checks
and the reference in docs/configuration.md all come from the declarations.
"""

from dataclasses import fields
from pathlib import Path

import pytest

from bridgeproxy import config
from bridgeproxy.config import ConfigError, parse

ROOT = Path(__file__).resolve().parent.parent


def test_the_reference_in_the_docs_is_the_declarations():
    """docs/configuration.md shows exactly the declared keys, types, defaults and doc lines."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert config.write_reference(text) == text, "run: python -m bridgeproxy.config docs/configuration.md"


@pytest.mark.parametrize("table,cls", [("", config.Config), *config.SECTIONS.items()])
def test_every_declared_key_is_read_and_nothing_else(table, cls):
    """Each declared key is accepted in its table with its default's kind; any other key is refused by name."""
    names = {f.name for f in config.declared(cls)}
    assert names
    section = {name: getattr(cls(), name) for name in names}
    section = {k: list(v) if isinstance(v, (tuple, frozenset)) else v for k, v in section.items()
               if v is not None}
    data = section if not table else {table: section}
    parse(data, environ={})
    bogus = {"not_a_key": 1} if not table else {table: {"not_a_key": 1}}
    with pytest.raises(ConfigError) as caught:
        parse(bogus, environ={})
    where = "not_a_key" if not table else f"{table}.not_a_key"
    assert repr(where) in str(caught.value)
    assert all(name in str(caught.value) for name in names)


def test_sections_declare_every_field():
    """No section field escapes the declarations (a key that is read but not documented)."""
    for cls in config.SECTIONS.values():
        assert {f.name for f in fields(cls)} == {f.name for f in config.declared(cls)}
    internal = {"name", "key", "key_source"}
    assert {f.name for f in fields(config.ProviderConfig)} - internal == {
        f.name for f in config.declared(config.ProviderConfig)}


@pytest.mark.parametrize("data,message", [
    ({"auth": {"cache_seconds": -1}}, "auth.cache_seconds must be 0 (off) or more"),
    ({"limits": {"max_concurrency": -1}}, "limits.max_concurrency must be 0 (off) or more"),
    ({"recording": {"retention_days": -3}}, "recording.retention_days must be 0 (off) or more"),
    ({"workers": 0}, "workers must be greater than 0"),
    ({"max_body_bytes": 0}, "max_body_bytes must be greater than 0"),
    ({"upstream": {"ca_file": "/nonexistent/ca.pem"}}, "upstream.ca_file: no such file"),
    ({"providers": {"openai": {"key_env": "A", "key_file": "b"}}}, "give key_env or key_file, not both"),
    ({"providers": {"openai": {"passthrough": "GET /v1/models"}}}, "providers.openai.passthrough must be a list"),
    ({"auth": []}, "[auth] must be a table"),
    ({"plugins": {"x": 1}}, "[plugins.x] must be a table"),
    ({"providers": {"é": {}}}, "a provider's name is its URL prefix"),
    ({"providers": {"Open AI": {}}}, "a provider's name is its URL prefix"),
    ({"providers": {"api": {}}}, "'api' is a path of the bridge's own"),
    ({"providers": {"healthz": {}}}, "'healthz' is a path of the bridge's own"),
])
def test_checks_name_the_key(data, message):
    """Every declared check refuses a bad value with a message naming the key."""
    with pytest.raises(ConfigError) as caught:
        parse(data, environ={})
    assert message in str(caught.value)


def test_relative_paths_are_beside_the_file(tmp_path):
    """A configuration file's relative sqlite path and spool path are taken from the file's directory."""
    path = tmp_path / "conf" / "bridge.toml"
    path.parent.mkdir()
    path.write_text('database = "sqlite:data/b.db"\n[recording]\nspool_path = "spool.jsonl"\n'
                    '[providers.openai]\nkey_file = "key.txt"\n')
    (path.parent / "key.txt").write_text("sk-file-0123456789\n")
    loaded = config.load(str(path), environ={})
    assert loaded.database == f"sqlite:{path.parent}/data/b.db"
    assert loaded.recording.spool_path == f"{path.parent}/spool.jsonl"
    assert loaded.providers["openai"].key == "sk-file-0123456789"
    assert parse({"database": "sqlite:b.db"}, environ={}).database == "sqlite:b.db"
    assert parse({"database": "sqlite::memory:"}, environ={}, source_path="x").database == "sqlite::memory:"


def test_a_config_that_is_not_text_is_one_error(tmp_path):
    """A file that is not UTF-8 or not TOML is a ConfigError naming the file, not a traceback."""
    path = tmp_path / "bad.toml"
    path.write_bytes(b"listen = \"\xff\xfe\"\n")
    with pytest.raises(ConfigError):
        config.load(str(path), environ={})
    path.write_text("listen = ")
    with pytest.raises(ConfigError) as caught:
        config.load(str(path), environ={})
    assert "not valid TOML" in str(caught.value)
