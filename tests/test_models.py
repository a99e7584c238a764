import pytest
import torch

from cnndeploy.cli import MODELS, PRECISIONS
from cnndeploy.models import create_model, get_spec, list_models

INPUTS = [(1, 28, 28), (3, 32, 32)]


def test_registry_lists_the_study_models_and_cli_agrees():
    assert list_models() == sorted(["lenet5", "alexnet", "resnet18", "resnet20", "resnet56"])
    assert sorted(MODELS) == list_models()


@pytest.mark.parametrize("name", ["lenet5", "alexnet", "resnet18", "resnet20", "resnet56"])
@pytest.mark.parametrize("shape", INPUTS)
def test_forward_shape_for_both_input_kinds(name, shape):
    model = create_model(name, 10, *shape).eval()
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,widths", [
    ("lenet5", {"conv": [4, 8], "fc": [32, 16]}),
    ("alexnet", {"conv": [8, 16, 24, 16, 8], "fc": [32, 32]}),
    ("resnet20", {"stages": [8, 16, 24], "inner": [8, 4, 8, 16, 8, 16, 24, 8, 24]}),
])
def test_pruned_widths_rebuild_from_widths_alone(name, widths):
    """A model with odd widths reports them, and a rebuild from that report takes its weights."""
    model = create_model(name, 7, 3, 32, 32, **widths).eval()
    reported = model.widths()
    for key, value in widths.items():
        assert list(reported[key]) == list(value)
    clone = create_model(name, 7, 3, 32, 32, **reported).eval()
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), clone(x))


def test_resnet_variants_have_the_papers_depth_and_widths():
    def convs(m):
        return sum(isinstance(x, torch.nn.Conv2d) and x.kernel_size == (3, 3) for x in m.modules())
    # He et al.: 6n+2 weighted layers = 6n 3x3 convs + stem + fc
    assert convs(create_model("resnet20", 10, 3, 32, 32)) == 19
    assert convs(create_model("resnet56", 10, 3, 32, 32)) == 55
    r18 = create_model("resnet18", 10, 3, 32, 32)
    assert r18.widths()["stages"] == [64, 128, 256, 512]
    assert r18.stem[0].kernel_size == (3, 3)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in r18.modules())


def test_bad_widths_and_names_are_refused():
    with pytest.raises(ValueError, match="positive integers"):
        create_model("lenet5", 10, 1, 28, 28, conv=[-1, 16])
    with pytest.raises(ValueError, match="no width argument"):
        create_model("lenet5", 10, 1, 28, 28, depth=3)
    with pytest.raises(KeyError, match="expected one of"):
        create_model("vgg16", 10, 1, 28, 28)


def test_every_model_has_recipes_for_both_datasets():
    for name in list_models():
        spec = get_spec(name)
        for ds in ("mnist", "cifar10", "my-folder"):
            r = spec.recipe(ds)
            assert r.epochs > 0 and r.batch_size > 0 and r.lr > 0


def test_cli_precisions_are_the_training_loops():
    from cnndeploy.train.loop import PRECISIONS as LOOP_PRECISIONS

    assert PRECISIONS == LOOP_PRECISIONS
