"""``fidoflow train`` end to end (CLI -> Prefect flow -> model folder -> ``fidoflow run``), and the
train-classifier deployment in prefect.yaml."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from fidoflow.flows.cli import main
from fidoflow.pipeline.archive.synthetic import write_archive
from fidoflow.pipeline.settings import TrainSettings

ROOT = Path(__file__).resolve().parent.parent


def test_train_deployment_names_the_flow_by_module_and_valid_settings() -> None:
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = [d for d in spec["deployments"]
                   if d["entrypoint"].endswith(":train_classifier")]
    assert len(deployments) == 1
    train = deployments[0]
    assert "schedules" not in train and train["work_pool"]["name"] == "fidoflow-process"
    flow = load_flow_from_entrypoint(train["entrypoint"])
    assert flow.name == "train-classifier"
    assert set(train["parameters"]) <= set(inspect.signature(flow.fn).parameters)
    TrainSettings.parse(train["parameters"]["settings"])


def test_the_train_deployment_form_shows_every_setting_typed_and_bounded() -> None:
    from fidoflow.flows.train import train_classifier

    schema = train_classifier.parameters.model_dump()
    settings = schema["definitions"]["TrainSettings"]["properties"]
    assert set(settings) == set(TrainSettings.model_fields)
    assert settings["epochs"] == {"default": 10, "description": settings["epochs"]["description"],
                                  "minimum": 1, "title": "Epochs", "type": "integer"}
    assert settings["loss"]["enum"] == ["ce", "gce"]
    assert all(field.get("description") for field in settings.values())


def test_cli_and_deployment_build_the_same_training_settings() -> None:
    import argparse

    from fidoflow.flows.settings import add_cli_options, settings_from_cli

    parser = argparse.ArgumentParser()
    add_cli_options(parser, TrainSettings)
    from_cli = settings_from_cli(parser.parse_args(
        ["--loss", "ce", "--no-diversify", "--epochs", "3", "--no-flip", "--p-peak", "0.2"]),
        TrainSettings)
    assert from_cli == TrainSettings.parse({"loss": "ce", "diversify": False, "epochs": 3,
                                            "flip": False, "p_peak": 0.2})
    job = from_cli.to_job("/data/birds", "/data/model")
    assert job.config.diversify is None and not job.config.flip and job.config.epochs == 3


def test_bad_training_options_fail_with_one_line(tmp_path: Path, capsys) -> None:
    assert main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "m")]) == 1
    assert "fidoflow: error: archive not found" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "m"), "--p-peak", "2"]) == 1
    assert ("fidoflow: error: invalid settings: p_peak: Input should be less than or equal to 1 "
            "(got 2.0)") in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_resumes_and_hands_the_model_to_fidoflow_run(tmp_path: Path, capsys) -> None:
    archive = write_archive(tmp_path / "birds", n=40, seed=6, size=64, classes=4)
    out = tmp_path / "model"
    args = ["train", str(archive), "--out", str(out), "--backbone", "synthetic-cnn",
            "--epochs", "2", "--batch-size", "16", "--val-fraction", "0.25", "--loss", "gce",
            "--top-k", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "best epoch" in printed and f"--model {out / 'model.pt'}" in printed
    summary = json.loads((out / "training.json").read_text())
    assert summary["config"]["top_k"] == 2 and summary["config"]["diversify"]["alpha"] == 0.1
    assert pq.read_table(out / "metrics.parquet").num_rows == 2

    assert main([*args, "--epochs", "3"]) == 1  # other settings: refused, not mixed
    assert "holds a training with other settings" in capsys.readouterr().err

    run = tmp_path / "run"
    assert main(["run", str(archive), "--out", str(run), "--model", str(out / "model.pt"),
                 "--iterations", "2", "--samples", "1", "--mask-size", "8", "--shard-size", "20",
                 "--workers", "1"]) == 0
    assert "2 of 2 shards run, 40 images, 0 errors" in capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert info["model"]["architecture"] == "fidoflow:synthetic-cnn-maps"
    assert info["model"]["classes"] == 4
    accuracy = pq.read_table(run / "summary.parquet").to_pandas().query(
        "section == 'accuracy' and group_by == 'overall' and statistic == 'top1'")
    assert len(accuracy) >= 1  # the archive's labels match the trained model's classes
