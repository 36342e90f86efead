"""The method registry and the shared base: parsing method instances, settings checked against
each kind's config, the base's batching and resizing, and `fidoflow methods`."""

from __future__ import annotations

import pytest
import torch

from fidoflow.pipeline.methods import KINDS, Attribution, Method, MethodSpec, parse_methods
from fidoflow.pipeline.methods.fido import FidoConfig
from tests.conftest import square_image


def test_kinds_and_named_variants_run_side_by_side() -> None:
    methods = parse_methods(["scd,cd", "knockoff=scd:infill=knockoff:samples=2", "gradcam"],
                            {"iterations": 7, "layer": None})
    assert list(methods) == ["scd", "cd", "knockoff", "gradcam"]
    assert methods["knockoff"] == MethodSpec("scd", FidoConfig(infill="knockoff", samples=2,
                                                               iterations=7))
    assert methods["cd"].config.sampler == "cd" and methods["scd"].config.sampler == "scd"
    assert methods["gradcam"].config.layer is None  # run-wide options reach FIDO kinds only
    again = {name: MethodSpec.from_json(spec.to_json()) for name, spec in methods.items()}
    assert again == methods


def test_run_wide_options_reach_the_fido_kinds_and_leave_the_others_their_own() -> None:
    run_wide = {"iterations": 50, "samples": 2, "mask_size": 56, "infill": "mean",
                "stop_change": 0.01}
    methods = parse_methods("scd,cd,igos,extremal,rise,fido-public,mine=igos:iterations=9",
                            run_wide)
    for name in ("scd", "cd"):
        config = methods[name].config
        assert (config.iterations, config.samples, config.mask_size, config.infill,
                config.stop_change) == (50, 2, 56, "mean", 0.01)
    assert methods["igos"].config == KINDS["igos"].make_config()  # I-GOS keeps its 15 steps
    assert methods["extremal"].config.iterations == 300
    assert methods["rise"].config.infill == "zeros"  # RISE keeps its own in-fill
    assert methods["fido-public"].config == KINDS["fido-public"].make_config()  # a reference
    assert methods["mine"].config.iterations == 9  # others are set by name


def test_fidoflow_methods_says_whom_the_run_wide_options_reach(capsys) -> None:
    from fidoflow.flows.cli import main

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    reach = {lines[i].split()[0]: lines[i + 2] for i, line in enumerate(lines[:-2])
             if lines[i + 2].strip().startswith("run-wide options:")}
    assert "--iterations" in reach["scd"] and "--samples" in reach["cd"]
    assert "none" in reach["igos"] and "none" in reach["rise"]


@pytest.mark.parametrize(("entries", "message"), [
    ("scd,nope", "unknown method 'nope'"),
    ("scd:samplez=3", "has no setting samplez"),
    ("scd:samples=lots", "scd:samples = 'lots' is not a"),
    ("scd,scd", "given twice"),
    ("Big=scd", "method name 'Big'"),
    ("scd:samples", "expected key=value"),
    ("", "no method given"),
])
def test_bad_entries_are_one_line_errors(entries: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_methods(entries)


def test_values_are_coerced_to_the_config_types() -> None:
    spec = parse_methods("x=scd:lr=1:stop_change=none:autocast=false:temperature=0.5")["x"]
    assert spec.config.lr == 1.0 and isinstance(spec.config.lr, float)
    assert spec.config.stop_change is None and spec.config.autocast is False
    assert spec.config.temperature == 0.5


class Stripes(Method):
    """A method for testing the base: map row i = image i's mean, at 4 × 4, counting calls."""

    calls: list[int]

    def explain(self, images, targets, seeds) -> Attribution:
        self.calls.append(len(images))
        joint = images.mean(dim=(1, 2, 3)).view(-1, 1, 1).expand(-1, 4, 4)
        return Attribution(targets, {"joint": joint}, {"seed": torch.tensor(seeds).float()})


def test_base_batches_resizes_and_freezes(square_model) -> None:
    images = torch.rand(20, 3, 32, 32)
    square_model.train()
    method = Stripes(square_model)
    method.calls = []
    with method:
        assert not square_model.training
        out = method.attribute(images, torch.zeros(20, dtype=torch.long), list(range(20)),
                               batch_size=3, size=8)
    assert square_model.training and all(p.requires_grad for p in square_model.parameters())
    assert method.calls == [8, 8, 4]  # at least min_batch images per call
    assert out.maps["joint"].shape == (20, 8, 8)
    torch.testing.assert_close(out.maps["joint"][:, 0, 0], images.mean(dim=(1, 2, 3)))
    assert out.scalars["seed"].tolist() == list(range(20))


def test_attribution_needs_a_joint_map() -> None:
    with pytest.raises(ValueError, match="joint"):
        Attribution(torch.zeros(1), {"other": torch.zeros(1, 2, 2)})


def test_every_kind_builds_from_its_defaults(square_model) -> None:
    for name, kind in KINDS.items():
        spec = MethodSpec(name, kind.make_config())
        assert isinstance(spec.build(square_model), kind.method)
        assert spec.map_names[0] == "joint"


def test_fido_attribute_names_its_own_maps(square_model) -> None:
    spec = parse_methods("scd:iterations=2:samples=1:mask_size=8")["scd"]
    with spec.build(square_model) as method:
        out = method.attribute(square_image(2), size=16)
    assert set(out.maps) == set(spec.map_names) and out.maps["joint"].shape == (2, 16, 16)
    assert set(out.scalars) == set(type(method).scalar_names)


def test_cli_lists_methods_with_defaults(capsys) -> None:
    from fidoflow.flows.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in KINDS:
        assert f"\n{name} " in f"\n{out}"
    assert "infill=blur" in out and "layer=None" in out


def test_an_unknown_method_is_a_one_line_cli_error(photo_folder, tmp_path, capsys) -> None:
    from fidoflow.flows.cli import main

    code = main(["run", str(photo_folder), "--out", str(tmp_path / "run"),
                 "--method", "scd,gradcam:layer=x:depth=3"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("fidoflow: error: invalid settings: method: method "
                                        "'gradcam' has no setting depth; settings: layer (")
    assert not (tmp_path / "run").exists()
