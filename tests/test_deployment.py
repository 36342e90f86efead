"""prefect.yaml points at the real flow, with parameters the flow accepts."""

import inspect
from pathlib import Path

import yaml

from flows.config import RunConfig
from flows.explain_archive import explain_archive

ROOT = Path(__file__).resolve().parent.parent


def test_every_deployment_names_the_flow_and_its_parameters() -> None:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    accepted = set(inspect.signature(explain_archive.fn).parameters)
    for deployment in spec["deployments"]:
        if deployment["entrypoint"].endswith(":train_classifier"):
            continue  # tests/test_training_flow.py
        path, name = deployment["entrypoint"].split(":")
        assert (ROOT / path).is_file() and name == "explain_archive"
        assert explain_archive.name == "explain-archive"
        assert set(deployment["parameters"]) <= accepted
        RunConfig.from_settings("/data/a", "/data/run", deployment["parameters"].get("settings"))


def test_settings_shortcuts_build_one_config_per_method() -> None:
    config = RunConfig.from_settings("/a", "/run", {"method": "scd,cd", "fido": {"iterations": 7},
                                                    "workers": 3})
    assert sorted(config.methods) == ["cd", "scd"] and config.workers == 3
    assert {c.iterations for c in config.methods.values()} == {7}
    assert config.methods["cd"].sampler == "cd"
    again = RunConfig.from_settings("/a", "/run", {k: v for k, v in config.to_json().items()
                                                   if k not in ("source", "root")})
    assert again == config
