"""Models deploysparse ships and benchmarks with, built in code.

- `digits`: the bundled demo model, a VGG-style CNN trained on 16x16 digits with Adam + L2, which
  carries real dead filters (entry point `deploysparse.zoo.digits:digits_model`) and its data.
- `resnet`: torchvision-layout ResNet-18/34/50/101 and He et al.'s CIFAR ResNet-20/56.
- `mobilenet`: torchvision-layout MobileNetV2.

Activations are not in-place, so a forward hook on a BatchNorm sees its own output (activation
statistics), not the ReLU's. Import the submodule you need; the package itself imports nothing, so
the digits data loads without torch.
"""
