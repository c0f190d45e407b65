"""Settings are read from the environment in one function; everything else takes a `Settings`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import telemetry_pipeline.settings as settings_module
from telemetry_pipeline.defs.resources import SignavioResource, SourcesResource, WarehouseResource
from telemetry_pipeline.defs.schedules import RetentionConfig
from telemetry_pipeline.settings import (
    MB,
    ConfigurationError,
    HttpSettings,
    Secret,
    SignavioSettings,
    SourcesSettings,
    for_home,
    from_environment,
    to_environment,
)
from telemetry_pipeline.signavio.schema import DEFAULT_DATASET
from telemetry_pipeline.sources.registry import VARIABLES
from telemetry_pipeline.transport.http import RetryPolicy

pytestmark = pytest.mark.fast  # `make test-fast`


def test_the_environment_is_read_once_into_typed_settings(tmp_path: Path):
    settings = from_environment({
        "TELEMETRY_PIPELINE_HOME": str(tmp_path),
        "EXTRACT_SERVICE_URL": "http://extract",
        "EXTRACT_SESSIONS_PATH": "",
        "SIGNAVIO_API_URL": "https://signavio/ingest",
        "SIGNAVIO_API_KEY": "tok-7f3e9a",
        "SIGNAVIO_TIMEOUT": "1m30s",
        "SIGNAVIO_POLL_DEADLINE": "2m",
        "SIGNAVIO_MAX_BODY_MB": "0.5",
        "SOURCE_TIMEOUT": "250ms",
        "EXPORT_BATCH_SIZE": "7",
        "AGENT_NAME": "  ",
        "SERVICE_NAME": "svc",
    })
    assert settings.home == tmp_path.resolve() and settings.dagster_home == tmp_path.resolve() / "dagster_home"
    assert settings.sources.values["extract_list_path"] == "", "an empty listing path means: no listing endpoint"
    assert settings.sources.values["agent_telemetry_url"] is None and settings.sources.values["otlp_dir"] is None
    assert settings.sources.http.timeout == 0.25 and settings.sources.agent_name == "svc"
    assert settings.signavio.http.timeout == 90.0 and settings.signavio.poll_deadline == 120.0
    assert settings.signavio.max_body_bytes == MB // 2 and settings.batch_size == 7
    assert settings.signavio.api_key == Secret("tok-7f3e9a", env_var="SIGNAVIO_API_KEY")
    assert "tok-7f3e9a" not in repr(settings), "a secret never appears in a repr"


def test_settings_round_trip_through_the_environment_a_subprocess_gets(tmp_path: Path):
    settings = for_home(
        tmp_path,
        sources=SourcesSettings.of(extract_url="http://e", agora_url="http://a", agora_token=Secret("agora-tok"),
                                   otlp_dir=tmp_path / "traces", http=HttpSettings(0.3, 1, 0.5), agent_name="me"),
        signavio=SignavioSettings(api_url="http://s", api_key=Secret("sig-tok"), dataset="d",
                                  http=HttpSettings(5.0, 2, 0.5), poll_interval=0.01, max_body_bytes=3 * MB),
        batch_size=9,
    )
    again = from_environment(to_environment(settings))
    assert again.sources.values["agora_token"] == Secret("agora-tok", env_var="AGORA_API_TOKEN")
    assert again.signavio.api_key == Secret("sig-tok", env_var="SIGNAVIO_API_KEY")
    unbound = again.replace(
        sources=again.sources.replace(agora_token=settings.sources.values["agora_token"]),
        signavio=SignavioSettings(**{**again.signavio.__dict__, "api_key": settings.signavio.api_key}),
    )
    assert unbound == settings


@pytest.mark.parametrize(("name", "value"), [("EXPORT_BATCH_SIZE", "many"), ("SIGNAVIO_TIMEOUT", "soon")])
def test_an_unreadable_setting_is_a_configuration_error_naming_it(name: str, value: str):
    with pytest.raises(ConfigurationError, match=name):
        from_environment({name: value})


def test_an_endpoint_without_a_token_is_refused_where_the_destination_is_built():
    settings = from_environment({"SIGNAVIO_API_URL": "https://signavio/ingest"})  # reading alone is fine
    with pytest.raises(ConfigurationError, match="SIGNAVIO_API_KEY"):
        settings.signavio.check()


def test_each_default_is_declared_once_so_every_way_in_agrees(tmp_path: Path):
    """A client built without settings, a resource written by hand in run config, the retention job launched
    from the UI and the environment's defaults all behave the same (README, Configuration)."""
    assert HttpSettings().retry == RetryPolicy(), "HTTP_RETRY_WAIT_INITIAL 0.5, 3 retries"
    built_sources = SourcesResource.from_settings(SourcesSettings())  # with each source's fields (the registry's)
    assert built_sources.model_dump() == type(built_sources)().model_dump()
    built = SignavioResource.from_settings(SignavioSettings(), tmp_path)
    by_hand = SignavioResource(dataset=DEFAULT_DATASET, max_body_bytes=built.max_body_bytes,
                               outbox_dir=built.outbox_dir)
    assert built.model_dump() == by_hand.model_dump()
    settings = from_environment({})
    assert (settings.warehouse.lease_seconds, settings.retention_days) == (30.0, 30.0)
    assert WarehouseResource(path="w").lease_seconds == settings.warehouse.lease_seconds
    assert RetentionConfig().older_than_days == settings.retention_days
    assert settings.signavio.dataset == DEFAULT_DATASET == "agent_telemetry"


# -- the README's configuration table -------------------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"
_ROW = re.compile(r"^\| ((?:`[A-Z][A-Z0-9_]+`(?:, )?)+) \| ([^|]*) \|", re.M)


def _readme_variables() -> dict[str, str | None]:
    """Each variable the README's Configuration table names, with its default as written (None: none, `–`)."""
    table = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    found: dict[str, str | None] = {}
    for names_cell, default_cell in _ROW.findall(table):
        names = re.findall(r"`([A-Z0-9_]+)`", names_cell)
        defaults = re.findall(r"`([^`]*)`", default_cell)
        for n, name in enumerate(names):
            found[name] = defaults[n] if len(defaults) == len(names) else None
    return found


def test_the_readme_names_every_variable_the_settings_read_and_their_defaults():
    read = {v for k, v in vars(settings_module).items()
            if k.isupper() and isinstance(v, str) and re.fullmatch(r"[A-Z][A-Z0-9_]+", v)}
    read |= {v.env for v in VARIABLES}
    documented = _readme_variables()
    # DAGSTER_POSTGRES_URL is read by the production instance's dagster.yaml, not by the settings.
    assert "DAGSTER_POSTGRES_URL" in (Path(__file__).resolve().parents[1] / "deploy" / "dagster.yaml").read_text()
    assert set(documented) - {"DAGSTER_POSTGRES_URL"} == read

    home = Path("/h")
    defaults = to_environment(for_home(home))
    for name, written in documented.items():
        if name in defaults and written is not None and "<" not in written and "/" not in written:
            as_read = to_environment(from_environment({"TELEMETRY_PIPELINE_HOME": str(home), name: written}))
            assert as_read[name] == defaults[name], f"README: {name} = {written!r}, the code: {defaults[name]!r}"
