"""The reference pages in docs/ stay in step with the code they describe.

configuration.md is generated (scripts/gen_config_docs.py) and must equal a fresh render; the
hand-written pages must at least name every public sgflow name, every route, every sampling
parameter and every metric that the code defines.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(REPO, "docs")


def _read(name: str) -> str:
    with open(os.path.join(DOCS, name), encoding="utf-8") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def gen_config_docs():
    spec = importlib.util.spec_from_file_location("gen_config_docs", os.path.join(REPO, "scripts", "gen_config_docs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_page_is_the_generated_one(gen_config_docs):
    assert _read("configuration.md") == gen_config_docs.render(), (
        "docs/configuration.md is stale: run python scripts/gen_config_docs.py")


def test_configuration_page_lists_every_engine_option_with_default_and_every_server_flag(gen_config_docs):
    from runtime.config import EngineConfig
    from runtime.server.launch import build_parser

    text = gen_config_docs.render()
    for f in dataclasses.fields(EngineConfig):
        row = next((line for line in text.splitlines() if line.startswith(f"| `{f.name}` |")), None)
        assert row is not None, f.name
        cells = [c.strip() for c in row.split("|")]
        assert f"`--{f.name.replace('_', '-')}`" in cells[2], (f.name, row)
        assert cells[4].strip("`'") == str(f.default), (f.name, row)
        for choice in f.metadata.get("choices") or ():
            assert f"`{choice}`" in row, (f.name, choice)
    for action in build_parser()._actions:
        for flag in action.option_strings:
            if flag not in ("-h", "--help"):
                assert f"`{flag}`" in text, flag


def test_every_engine_option_lands_in_exactly_one_section(gen_config_docs):
    from runtime.config import EngineConfig

    listed = [f.name for fields in gen_config_docs.engine_sections().values() for f in fields]
    assert sorted(listed) == sorted(f.name for f in dataclasses.fields(EngineConfig))
    assert "other" not in gen_config_docs.engine_sections()  # every field sits under a `# ---` heading


def test_check_mode_reports_a_stale_page(gen_config_docs, tmp_path, monkeypatch):
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    monkeypatch.setattr(gen_config_docs, "OUTPUT", str(stale))
    assert gen_config_docs.main(["--check"]) == 1
    assert gen_config_docs.main([]) == 0
    assert gen_config_docs.main(["--check"]) == 0
    assert stale.read_text() == gen_config_docs.render()


def test_language_reference_names_every_public_name():
    import sgflow

    text = _read("language.md")
    missing = [name for name in sgflow.__all__ if f"`{name}`" not in text]
    assert not missing, missing


def test_server_reference_names_every_route_sampling_field_and_metric():
    from runtime.sampling_params import SamplingParams
    from runtime.server.metrics import ServerMetrics
    from runtime.server.native_routes import router as native_router
    from runtime.server.openai_routes import router as openai_router

    text = _read("server-api.md")
    routes = {route.path for router in (native_router, openai_router) for route in router.routes}
    assert not [r for r in routes if f"`{r}`" not in text], routes
    assert not [f.name for f in dataclasses.fields(SamplingParams) if f"`{f.name}`" not in text]

    stats = dict.fromkeys(["prompt_tokens", "cached_prompt_tokens", "generation_tokens", "num_requests",
                           "num_retractions", "num_running", "num_waiting", "cache_hit_rate", "kv_free",
                           "kv_cached", "kv_total"], 1)
    metrics = ServerMetrics(lambda: stats)
    metrics.http_requests.labels(route="/generate", status="200").inc()
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    documented = set(re.findall(r"`(sgflow_[a-z0-9_]+)", text))
    assert names <= documented, sorted(names - documented)
