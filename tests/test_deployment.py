"""prefect.yaml points at the real flow by module; its settings are the CLI's, validated alike."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest
import yaml

from fidoflow.flows.explain_archive import explain_archive
from fidoflow.flows.settings import add_cli_options, settings_from_cli
from fidoflow.pipeline.settings import RunSettings

ROOT = Path(__file__).resolve().parent.parent


def test_every_deployment_names_the_flow_by_module_with_accepted_parameters() -> None:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert {"nightly", "adhoc"} <= names
    schema = explain_archive.parameters.model_dump()["properties"]
    for deployment in spec["deployments"]:
        if deployment["entrypoint"].endswith((":train_classifier", ":learn_concepts")):
            continue  # tests/test_training_flow.py, tests/test_concepts.py
        module, name = deployment["entrypoint"].split(":")
        assert not module.endswith(".py"), "file entrypoints break imports on Dask workers"
        assert getattr(importlib.import_module(module), name) is explain_archive
        assert set(deployment.get("parameters", {})) <= set(schema)
        RunSettings.parse(deployment.get("parameters", {}).get("settings", {}))
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly")
    assert nightly["schedules"][0]["active"] is False


def test_the_deployment_form_shows_every_setting_typed_and_bounded() -> None:
    schema = explain_archive.parameters.model_dump()
    settings = schema["definitions"]["RunSettings"]["properties"]
    assert set(settings) == set(RunSettings.model_fields)
    assert settings["iterations"]["anyOf"][0] == {"minimum": 1, "type": "integer"}
    assert settings["device"]["default"] == "auto"
    assert all(field.get("description") for field in settings.values())


def cli_settings(*argv: str) -> RunSettings:
    parser = argparse.ArgumentParser()
    add_cli_options(parser)
    return settings_from_cli(parser.parse_args(list(argv)))


def test_cli_and_deployment_build_the_same_settings() -> None:
    from_cli = cli_settings("--method", "scd,cd", "--iterations", "7", "--workers", "3",
                            "--max-pixels", "2M", "--explain-only")
    from_deployment = RunSettings.parse({"method": "scd,cd", "iterations": 7, "workers": 3,
                                         "max_pixels": 2_000_000, "explain_only": True})
    assert from_cli == from_deployment
    config = from_cli.to_config("/a", "/run")
    assert sorted(config.methods) == ["cd", "scd"] and config.device == "auto"
    assert {s.config.iterations for s in config.methods.values()} == {7}
    assert not config.analyse and config.methods["cd"].config.sampler == "cd"


def test_a_deployment_method_list_equals_the_shell_string() -> None:
    as_list = RunSettings.parse({"method": ["scd", "knockoff=scd:infill=knockoff", "gradcam"]})
    assert as_list == cli_settings("--method", "scd", "--method", "knockoff=scd:infill=knockoff",
                                   "--method", "gradcam")
    assert as_list == RunSettings.parse({"method": "scd,knockoff=scd:infill=knockoff,gradcam"})
    methods = as_list.to_config("/a", "/run").methods
    assert list(methods) == ["scd", "knockoff", "gradcam"]
    assert methods["knockoff"].config.infill == "knockoff"


@pytest.mark.parametrize(("values", "message"), [
    ({"iterations": 0}, "iterations: Input should be greater than or equal to 1 (got 0)"),
    ({"iterations": -5}, "iterations: Input should be greater than or equal to 1 (got -5)"),
    ({"mask_size": 0}, "mask_size: Input should be greater than or equal to 1"),
    ({"workers": 0}, "workers: Input should be greater than or equal to 1"),
    ({"shard_size": 0}, "shard_size: Input should be greater than or equal to 1"),
    ({"device": "gpu"}, "device: expected auto, cpu, mps, cuda or cuda:N, got 'gpu'"),
    ({"method": "scd,grad"}, "unknown method 'grad'"),
    ({"target": "truth"}, "target: Input should be 'predicted' or 'label'"),
    ({"frobnicate": 1}, "frobnicate: Extra inputs are not permitted"),
])
def test_bad_settings_fail_with_one_line_naming_the_field(values: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        RunSettings.parse(values)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_cli_refuses_what_a_deployment_refuses(capsys) -> None:
    from fidoflow.flows.cli import main

    assert main(["run", str(ROOT), "--out", "/nonexistent/run", "--iterations", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fidoflow: error: invalid settings: iterations")
