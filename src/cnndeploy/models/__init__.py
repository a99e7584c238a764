"""Model registry and the networks of the study: LeNet-5, AlexNet, ResNet-18/20/56."""

from cnndeploy.models.alexnet import AlexNet
from cnndeploy.models.lenet import LeNet5
from cnndeploy.models.registry import ModelSpec, Recipe, create_model, get_spec, list_models, register
from cnndeploy.models.resnet import ResNet

register(ModelSpec(
    name="lenet5", builder=LeNet5, defaults={"conv": (6, 16), "fc": (120, 84)},
    recipes={"mnist": Recipe(epochs=6, batch_size=128, lr=0.05),
             "cifar10": Recipe(epochs=80, batch_size=256, lr=0.05)},
    summary="LeNet-5 with ReLU and max-pooling (61k parameters)", paper="LeCun et al. 1998"))
register(ModelSpec(
    name="alexnet", builder=AlexNet,
    defaults={"conv": (64, 192, 384, 256, 256), "fc": (1024, 1024), "dropout": 0.5},
    recipes={"mnist": Recipe(epochs=20, batch_size=512, lr=0.1),
             "cifar10": Recipe(epochs=40, batch_size=512, lr=0.1)},
    summary="AlexNet adapted to 28/32-pixel inputs: 5 conv (3x3, BN) + 3 FC with dropout",
    paper="Krizhevsky et al. 2012"))
register(ModelSpec(
    name="resnet18", builder=ResNet, defaults={"stages": (64, 128, 256, 512), "blocks": (2, 2, 2, 2), "inner": None},
    recipes={"mnist": Recipe(epochs=20, batch_size=512, lr=0.2),
             "cifar10": Recipe(epochs=60, batch_size=256, lr=0.2)},
    summary="ResNet-18, CIFAR variant (3x3 stem, no max-pool)", paper="He et al. 2016"))
register(ModelSpec(
    name="resnet20", builder=ResNet, defaults={"stages": (16, 32, 64), "blocks": (3, 3, 3), "inner": None},
    recipes={"mnist": Recipe(epochs=10, batch_size=256, lr=0.1),
             "cifar10": Recipe(epochs=40, batch_size=256, lr=0.2)},
    summary="ResNet-20 for CIFAR (He et al. 2016, sec. 4.2), 1x1 projection shortcuts",
    paper="He et al. 2016"))
register(ModelSpec(
    name="resnet56", builder=ResNet, defaults={"stages": (16, 32, 64), "blocks": (9, 9, 9), "inner": None},
    recipes={"mnist": Recipe(epochs=10, batch_size=256, lr=0.1),
             "cifar10": Recipe(epochs=60, batch_size=256, lr=0.2)},
    summary="ResNet-56 for CIFAR (He et al. 2016, sec. 4.2), 1x1 projection shortcuts",
    paper="He et al. 2016"))

__all__ = ["AlexNet", "LeNet5", "ModelSpec", "Recipe", "ResNet", "create_model", "get_spec",
           "list_models", "register"]
