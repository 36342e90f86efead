"""Model loading (built-ins, TorchScript, state_dict + card, pickles only when trusted) and the
mapping of an archive's labels into the model's classes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from fidoflow.pipeline.archive.labels import map_labels, read_label_map
from fidoflow.pipeline.archive.synthetic import CLASS_NAMES
from fidoflow.pipeline.models.loading import (
    BUILTIN,
    SYNTHETIC,
    ModelError,
    Normalized,
    is_torchscript,
    load_model,
    read_card,
)
from fidoflow.pipeline.models.synthetic_cnn import SyntheticCNN, load_synthetic_classifier

NAMES = list(CLASS_NAMES[:8])
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(scope="module")
def reference() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    net, _ = load_synthetic_classifier()
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return net, x, net(x)


def outputs(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.module(x)


def write_state_dict(folder: Path, net: torch.nn.Module, card: dict | None,
                     suffix: str = ".yaml", name: str = "birds.pt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / name
    torch.save(net.state_dict(), weights)
    if card is not None:
        text = json.dumps(card) if suffix == ".json" else yaml.safe_dump(card)
        weights.with_suffix(suffix).write_text(text)
    return weights


def test_builtin_synthetic_cnn(reference) -> None:
    _, x, y = reference
    model = load_model(SYNTHETIC)
    assert model.class_names == NAMES and model.input_size == (96, 96)
    assert len(model.identity) == 64 and model.resize == "squash"
    torch.testing.assert_close(outputs(model, x), y)


def test_builtin_efficientnet_lite0() -> None:
    model = load_model(BUILTIN)
    assert len(model.class_names) == 1000 and model.input_size == (224, 224)
    assert isinstance(model.module, Normalized)
    assert model.describe()["architecture"] == BUILTIN


def test_torchscript_file_loads_without_a_card(reference, tmp_path: Path) -> None:
    net, x, y = reference
    path = tmp_path / "scripted.ts"
    torch.jit.save(torch.jit.script(net), path)
    assert is_torchscript(path)
    model = load_model(str(path))
    assert model.class_names == [f"class_{i}" for i in range(8)]
    assert model.input_size == (224, 224) and model.details["format"] == "torchscript"
    torch.testing.assert_close(outputs(model, x), y)
    (tmp_path / "scripted.yaml").write_text(yaml.safe_dump(
        {"classes": NAMES, "input_size": 96, "resize": "crop"}))
    carded = load_model(str(path))
    assert carded.class_names == NAMES and carded.input_size == (96, 96)
    assert carded.resize == "crop" and carded.identity != model.identity


def test_exported_program_with_a_dynamic_batch(reference, tmp_path: Path) -> None:
    net, x, y = reference
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(net, (x,), dynamic_shapes={"x": {0: batch}})
    path = tmp_path / "birds.pt2"
    torch.export.save(program, path)
    (tmp_path / "birds.yaml").write_text(yaml.safe_dump({"classes": NAMES, "input_size": 96}))
    model = load_model(str(path))
    assert model.details["format"] == "torch.export" and model.class_names == NAMES
    torch.testing.assert_close(outputs(model, x), y)
    three = torch.rand(3, 3, 96, 96, requires_grad=True)
    model.module(three).sum().backward()  # FIDO needs gradients through it
    assert three.grad is not None and three.grad.abs().sum() > 0


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_state_dict_with_a_card_beside_it(suffix: str, reference, tmp_path: Path) -> None:
    net, x, y = reference
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    weights = write_state_dict(tmp_path, net, {"architecture": "fidoflow:synthetic-cnn",
                                               "classes": "names.txt", "input_size": [96, 96]},
                               suffix)
    model = load_model(str(weights))
    assert model.class_names == NAMES and model.name == "birds.pt"
    assert model.details["architecture"] == "fidoflow:synthetic-cnn"
    torch.testing.assert_close(outputs(model, x), y)


def test_identity_follows_weights_and_card(reference, tmp_path: Path) -> None:
    net, _, _ = reference
    weights = write_state_dict(tmp_path, net, {"architecture": "fidoflow:synthetic-cnn"})
    first = load_model(str(weights)).identity
    assert load_model(str(weights)).identity == first
    weights.with_suffix(".yaml").write_text(yaml.safe_dump(
        {"architecture": "fidoflow:synthetic-cnn", "classes": [n.upper() for n in NAMES]}))
    second = load_model(str(weights)).identity
    assert second != first
    other = SyntheticCNN()
    torch.save(other.state_dict(), weights)
    assert load_model(str(weights)).identity not in (first, second)


def test_explicit_card_checkpoint_layout_and_normalisation(reference, tmp_path: Path) -> None:
    net, x, _ = reference
    weights = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                "epoch": torch.tensor(3)}, weights)
    card = tmp_path / "cards" / "any-name.yml"
    card.parent.mkdir()
    card.write_text(yaml.safe_dump({"architecture": "fidoflow:synthetic-cnn", "mean": 0.5,
                                    "std": [0.25, 0.25, 0.25]}))
    model = load_model(str(weights), card=card)
    assert isinstance(model.module, Normalized)
    expected = net((x - 0.5) / 0.25)
    torch.testing.assert_close(outputs(model, x), expected.detach())


def test_efficientnet_architecture_with_fewer_classes(tmp_path: Path) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", num_classes=3)
    weights = write_state_dict(tmp_path, net, {"architecture": "efficientnet-lite0",
                                               "classes": ["a", "b", "c"], "input_size": 64})
    model = load_model(str(weights))
    assert model.class_names == ["a", "b", "c"] and model.details["mean"] == [0.5] * 3


@pytest.mark.parametrize("card, message", [
    (None, "give a model card with its architecture"),
    ({"classes": NAMES}, "give a model card with its architecture"),
    ({"architecture": "torchvision:resnet50"}, r"fidoflow\[vision\]"),
    ({"architecture": "timm:resnet50"}, r"fidoflow\[vision\]"),
    ({"architecture": "keras:resnet"}, "unknown architecture"),
    ({"architecture": "fidoflow:synthetic-cnn", "classes": ["a", "b"]}, "do not fit"),
    ({"architecture": "fidoflow:synthetic-cnn", "resize": "stretch"}, "resize must be"),
    ({"architecture": "fidoflow:synthetic-cnn", "colour": "rgb"}, "unknown field"),
    ({"architecture": "fidoflow:synthetic-cnn", "input_size": "big"}, "input_size must"),
])
def test_bad_cards_fail_with_a_clear_message(card, message, reference, tmp_path: Path) -> None:
    weights = write_state_dict(tmp_path, reference[0], card)
    with pytest.raises(ModelError, match=message):
        load_model(str(weights))


def test_class_names_must_match_the_outputs(reference, tmp_path: Path) -> None:
    path = tmp_path / "s.pt"
    torch.jit.save(torch.jit.script(reference[0]), path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"classes": ["a", "b"], "input_size": 96}))
    with pytest.raises(ModelError, match="8 outputs but 2 class names"):
        load_model(str(path))


def test_pickled_models_need_trust(reference, tmp_path: Path) -> None:
    net, x, y = reference
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with pytest.raises(ModelError, match="--trust-model-code"):
        load_model(str(path))
    model = load_model(str(path), trust_code=True)
    assert model.details["format"] == "pickle"
    torch.testing.assert_close(outputs(model, x), y)


@pytest.mark.parametrize("spec, message", [("resnet-9000", "unknown model"),
                                           ("garbage", "no PyTorch file")])
def test_unknown_specs_and_garbage_files(spec: str, message: str, tmp_path: Path) -> None:
    if spec == "garbage":
        (tmp_path / "w.pt").write_bytes(b"not a checkpoint at all")
        spec = str(tmp_path / "w.pt")
    with pytest.raises(ModelError, match=message):
        load_model(spec)


def test_read_card_resolves_class_files_relative_to_the_card(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("x\n\ny\n")
    (tmp_path / "m.yaml").write_text("architecture: fidoflow:synthetic-cnn\nclasses: c.txt\n"
                                     "input_size: [32, 48]\nmean: [0.1, 0.2, 0.3]\nstd: 0.5\n")
    card = read_card(tmp_path / "m.yaml")
    assert card.classes == ["x", "y"] and card.input_size == (32, 48)
    assert card.mean == (0.1, 0.2, 0.3) and card.std == (0.5, 0.5, 0.5)
    (tmp_path / "c.txt").write_text("x\nz\n")
    assert read_card(tmp_path / "m.yaml").digest != card.digest


# --- label mapping ----------------------------------------------------------------------------

MODEL_CLASSES = ["red_plain", "red_barred", "blue_plain"]


def test_labels_map_by_exact_name_when_names_coincide() -> None:
    out = map_labels(["red_barred", "red_plain", None, "green"], MODEL_CLASSES)
    assert out.model_label == [1, 0, None, None] and out.mode == "name-match"
    assert out.report()["unknown_names"] == {"green": 1} and out.unlabelled == 1


def test_no_common_name_means_no_mapping_and_no_noise() -> None:
    out = map_labels(["001.Albatross", "002.Gull"], MODEL_CLASSES)
    assert out.model_label == [None, None] and out.mode == "none"
    assert out.report()["unknown"] == 0


def test_label_map_file_by_name_and_index(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    path.write_text("label_name,model_class\nalbatross,red_barred\ngull,2\nempty,\n")
    mapping = read_label_map(path, MODEL_CLASSES)
    assert mapping == {"albatross": 1, "gull": 2, "empty": None}
    out = map_labels(["gull", "albatross", "empty", "heron", "heron", None], MODEL_CLASSES, mapping)
    assert out.model_label == [2, 1, None, None, None, None]
    assert out.report() == {"mode": "label-map", "mapped": 2, "unlabelled": 1, "excluded": 1,
                            "unknown": 2, "unknown_names": {"heron": 2}}


@pytest.mark.parametrize("text, message", [
    ("label_name,model_class\na,purple\n", "'purple'"),
    ("label_name,model_class\na,7\n", "'7'"),
    ("label_name,model_class\na,0\na,1\n", "mapped twice"),
    ("name,class\na,0\n", "needs a header"),
])
def test_bad_label_maps_are_refused(text: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "map.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_label_map(tmp_path / "map.csv", MODEL_CLASSES)


def manifest_of(config) -> tuple:
    """The run's manifest table, as prepare_run writes it, and the label report."""
    from fidoflow.pipeline.stages.prepare import model_of, write_manifest
    from fidoflow.storage import tables
    from fidoflow.storage.runfolder import RunFolder

    run = RunFolder(config.root)
    _, found = write_manifest(run, config, model_of(config))
    labels = found["labels"]
    return run.read_table(tables.MANIFEST.path), labels


def test_synthetic_archive_maps_onto_the_synthetic_model(tmp_path: Path) -> None:
    """ImageFolder labels index sorted folder names; model_label is the model's own index."""
    from fidoflow.pipeline.archive.synthetic import write_archive
    from fidoflow.pipeline.config import RunConfig

    write_archive(tmp_path / "syn", 6, seed=0, size=32, classes=3)
    config = RunConfig(source=str(tmp_path / "syn"), root=str(tmp_path / "run"),
                       model="synthetic-cnn")
    table, labels = manifest_of(config)
    rows = table.to_pylist()
    assert labels["mode"] == "name-match" and labels["mapped"] == 6
    for row in rows:
        assert NAMES[row["model_label"]] == row["label_name"]
    assert {r["label"] for r in rows} == {0, 1, 2}
    assert any(r["label"] != r["model_label"] for r in rows)  # two different class spaces


def test_label_map_through_the_manifest_reports_unknown_names(tmp_path: Path) -> None:
    from fixtures_archives import cub_tree

    from fidoflow.pipeline.config import RunConfig

    cub_tree(tmp_path / "cub")
    (tmp_path / "map.csv").write_text("label_name,model_class\n001.Black_footed_Albatross,"
                                      "blue_barred\n")
    config = RunConfig(source=str(tmp_path / "cub"), root=str(tmp_path / "run"),
                       model="synthetic-cnn", label_map=str(tmp_path / "map.csv"))
    table, labels = manifest_of(config)
    assert table.column("model_label").to_pylist() == [NAMES.index("blue_barred")] * 2 + [None] * 2
    assert labels["unknown_names"] == {"002.Laysan_Albatross": 2} and labels["mapped"] == 2


def test_any_random_bytes_read_as_corrupt_without_unsafe_advice(tmp_path: Path) -> None:
    """Whatever torch.load trips over, the message is the same and never says weights_only."""
    rng = random.Random(7)
    for i in range(200):
        path = tmp_path / f"m{i}.pt"
        path.write_bytes(rng.randbytes(rng.choice([1, 64, 4096])))
        with pytest.raises(ModelError) as caught:
            load_model(str(path))
        assert "corrupt or no PyTorch file" in str(caught.value)
        assert "weights_only" not in str(caught.value)
