"""
Configuration keys are declared once: reading, refusing unknown keys, checks
and the reference in docs/configuration.md all come from the declarations.
"""

import importlib.util
import os
from dataclasses import fields
from pathlib import Path

import pytest

from bridgeproxy import config
from bridgeproxy.config import ConfigError, parse

ROOT = Path(__file__).resolve().parent.parent


def test_the_reference_in_the_docs_is_the_declarations():
    """
    docs/configuration.md shows exactly the declared keys, types, defaults
    and doc lines, as `python -m bridgeproxy.config` writes them: from the
    module run afresh, its declarations made again (they run once, at
    import), which then read and check a file's keys the same way.
    """
    text = (ROOT / "docs" / "configuration.md").read_text()
    spec = importlib.util.find_spec("bridgeproxy.config")
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.write_reference(text) == text, "run: python -m bridgeproxy.config docs/configuration.md"
    assert config.write_reference(text) == text
    with pytest.raises(ConfigError) as caught:
        fresh.parse({"recording": {"batch_size": 0}}, environ={})
    assert str(caught.value) == "recording.batch_size must be greater than 0, got 0"
    with pytest.raises(ConfigError) as caught:
        fresh.parse({"auth": {"allow_byok": "yes"}}, environ={})
    assert str(caught.value) == "auth.allow_byok must be bool, got str"


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
    ({"providers": {"openai": {"key_env": "A", "key_file": "b"}}},
     "providers.openai: give key_env or key_file, not both"),
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


@pytest.mark.parametrize("data,message", [
    ({"lisen": "tcp:1"}, "unknown key 'lisen' (known keys here: access_log, aiproxy, auth, breaker, budgets, clients, "
                         "database, identity_backend, initiator, limits, listen, log_interceptions, max_body_bytes, "
                         "metrics_listen, plugins, prices, providers, recording, retries, shutdown_grace_seconds, "
                         "upstream, workers)"),
    ({"clients": {"detector": []}}, "unknown key 'clients.detector' (known keys here: detectors)"),
    ({"workers": "2"}, "workers must be int, got str"),
    ({"workers": 2.0}, "workers must be int, got float"),
    ({"upstream": {"timeout": "5"}}, "upstream.timeout must be float, got str"),
    ({"metrics_listen": 9090}, "metrics_listen must be str, got int"),
    ({"auth": {"extractors": "coder-token"}}, "auth.extractors must be a list of non-empty strings"),
    ({"auth": {"extractors": ["coder-token", 1]}}, "auth.extractors must be a list of non-empty strings"),
    ({"auth": {"extractors": ["coder-token", " "]}}, "auth.extractors must be a list of non-empty strings"),
    ({"database": "mysql://root:pw-0123456789@db/bridge"},
     "database must be 'sqlite:PATH' or 'postgresql://...', got 'mysql'..."),
    ({"database": "bridge.db"}, "database must be 'sqlite:PATH' or 'postgresql://...', got 'bridge.db'..."),
    ({"providers": {"local": 1}}, "[providers.local] must be a table"),
    ({"providers": {"metrics": {}}},
     "[providers.metrics]: 'metrics' is a path of the bridge's own (api, healthz, metrics, readyz, ui are reserved)"),
    ({"providers": {"openai": {"base_url": "api.openai.com"}}},
     "providers.openai.base_url must start with http:// or https://, got 'api.openai.com'"),
    ({"providers": {"openai": {"passthrough_extra": ["GET v1/models"]}}},
     "providers.openai.passthrough_extra: passthrough rule 'GET v1/models' must be 'METHODS /path/pattern'"),
])
def test_errors_say_exactly_what_is_wrong(data, message):
    """The one line a bad file stops the start with: the key, what it must be, what it got (never a password)."""
    with pytest.raises(ConfigError) as caught:
        parse(data, environ={})
    assert str(caught.value).startswith(message)
    assert "pw-0123456789" not in str(caught.value)


def test_values_read_as_declared():
    """Whole numbers are accepted for numbers; lists become tuples, trimmed; base URLs lose a trailing slash."""
    read = parse({"upstream": {"timeout": 5}, "auth": {"extractors": [" x-api-key "]},
                  "providers": {"openai": {"base_url": "https://gw.example/X/"},
                                "anthropic": {"base_url": ""}}}, environ={})
    assert read.upstream.timeout == 5.0 and isinstance(read.upstream.timeout, float)
    assert read.auth.extractors == ("x-api-key",)
    assert read.providers["openai"].base_url == "https://gw.example/X"
    assert read.providers["anthropic"].base_url is None   # empty: the plugin's default
    assert parse({"database": "postgres://h/db"}, environ={}).database == "postgres://h/db"


def test_providers_default_to_their_plugin_and_their_key_variable(monkeypatch):
    """A table serves the plugin of its name unless it names one; its key comes from <NAME>_API_KEY, or none."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-process-env-0123456789")
    read = parse({"providers": {"openai": {}, "local": {"plugin": "openai-compatible", "key_env": "LOCAL_KEY"},
                                "anthropic": {}}},
                 environ={"OPENAI_API_KEY": " sk-env-0123456789 \n"})
    openai, local, anthropic = read.providers["openai"], read.providers["local"], read.providers["anthropic"]
    assert (openai.plugin, openai.key, openai.key_source) == (
        "openai", "sk-env-0123456789", "environment variable OPENAI_API_KEY")
    assert (local.name, local.plugin, local.key, local.key_source) == (
        "local", "openai-compatible", None, "environment variable LOCAL_KEY")
    assert (anthropic.key, anthropic.key_source) == (None, "environment variable ANTHROPIC_API_KEY")
    assert parse({}, environ={"OPENAI_API_KEY": "sk-env-0123456789"}).providers["openai"].key == "sk-env-0123456789"
    # Without environ, the process's own environment.
    assert parse({}).providers["openai"].key == "sk-process-env-0123456789"


def test_plugins_tables_and_where_a_config_came_from(tmp_path, monkeypatch):
    """[plugins.<name>] tables reach the plugins as given; a loaded file says where it came from, and its
    keys come from the environment given, not the process's."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-process-env-0123456789")
    assert parse({"plugins": {"acme": {"cookie": "bridge_token", "n": 2}}}, environ={}).plugins == {
        "acme": {"cookie": "bridge_token", "n": 2}}
    assert parse({}, environ={}).source_path is None
    path = tmp_path / "bridge.toml"
    path.write_text("[plugins.acme]\ncookie = \"bridge_token\"\n")
    loaded = config.load(str(path), environ={})
    assert loaded.source_path == str(path)
    assert loaded.plugins == {"acme": {"cookie": "bridge_token"}}
    assert loaded.providers["openai"].key is None


def test_key_files(tmp_path):
    """A key file is read beside the configuration, trimmed; one that cannot be read or is not text is one
    line naming it."""
    (tmp_path / "openai.key").write_text("  sk-file-0123456789\n")
    (tmp_path / "empty.key").write_text("\n")
    (tmp_path / "binary.key").write_bytes(b"sk-\xff\xfe")
    path = tmp_path / "bridge.toml"
    path.write_text('[providers.openai]\nkey_file = "openai.key"\n[providers.anthropic]\nkey_file = "empty.key"\n')
    loaded = config.load(str(path), environ={})
    assert (loaded.providers["openai"].key, loaded.providers["openai"].key_source) == (
        "sk-file-0123456789", f"file {tmp_path / 'openai.key'}")
    assert (loaded.providers["anthropic"].key, loaded.providers["anthropic"].key_source) == (
        None, f"file {tmp_path / 'empty.key'}")
    path.write_text('[providers.openai]\nkey_file = "missing.key"\n')
    with pytest.raises(ConfigError) as caught:
        config.load(str(path), environ={})
    assert str(caught.value) == (f"providers.openai.key_file: cannot read {str(tmp_path / 'missing.key')!r}: "
                                 "No such file or directory")
    path.write_text('[providers.openai]\nkey_file = "binary.key"\n')
    with pytest.raises(ConfigError) as caught:
        config.load(str(path), environ={})
    assert str(caught.value) == f"providers.openai.key_file: {str(tmp_path / 'binary.key')!r} is not UTF-8 text"


def test_relative_ca_file_and_spool_path(tmp_path, monkeypatch):
    """A relative ca_file is found beside the configuration file (or, without one, in the working directory);
    an empty spool path or in-memory database stays as written."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "ca.pem").write_text("PEM")
    path = tmp_path / "conf" / "bridge.toml"
    path.write_text('database = "sqlite:"\n[upstream]\nca_file = "ca.pem"\n[recording]\nspool_path = ""\n')
    loaded = config.load(str(path), environ={})
    assert loaded.upstream.ca_file == str(tmp_path / "conf" / "ca.pem")
    assert loaded.database == "sqlite:" and loaded.recording.spool_path == ""
    monkeypatch.chdir(tmp_path / "conf")
    assert parse({"upstream": {"ca_file": "ca.pem"}}, environ={}).upstream.ca_file == os.path.join(".", "ca.pem")
    assert parse({"upstream": {"ca_file": ""}}, environ={}).upstream.ca_file is None
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        parse({"upstream": {"ca_file": "ca.pem"}}, environ={})
    assert str(caught.value) == f"upstream.ca_file: no such file {os.path.join('.', 'ca.pem')!r}"


def test_a_file_that_cannot_be_read_is_one_line(tmp_path):
    """A file that cannot be read, or is not UTF-8, is one line naming it."""
    with pytest.raises(ConfigError) as caught:
        config.load(str(tmp_path / "missing.toml"), environ={})
    assert str(caught.value) == (f"cannot read configuration {str(tmp_path / 'missing.toml')!r}: "
                                 "No such file or directory")
    path = tmp_path / "bad.toml"
    path.write_bytes(b"listen = \"\xff\"\n")
    with pytest.raises(ConfigError) as caught:
        config.load(str(path), environ={})
    assert str(caught.value) == f"{path}: not UTF-8 text"


def test_override_replaces_only_what_it_names():
    """Command-line options (--listen, --workers) beat the file's values and leave the rest."""
    base = parse({"listen": "tcp:1", "workers": 2, "database": "sqlite:x.db"}, environ={})
    changed = config.override(base, listen="tcp:2")
    assert (changed.listen, changed.workers, changed.database) == ("tcp:2", 2, "sqlite:x.db")
    assert base.listen == "tcp:1"
