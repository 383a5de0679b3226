"""Write the ONNX test fixtures of tests/fixtures/onnx/ from the shipped weights.

    python -m venv /tmp/peers && /tmp/peers/bin/pip install torch onnx safetensors \
        efficientnet-lite-pytorch==0.1.0
    /tmp/peers/bin/python scripts/export_onnx.py

- mnist-cnn.onnx: models/mnist-cnn.safetensors in PyTorch's SmallCNN, exported by
  torch.onnx.export (the TorchScript exporter, opset 17, dynamic batch), as a user would.
- efficientnet-lite0.onnx: models/efficientnet-lite0.safetensors in the PyTorch implementation it
  came from (PyPI efficientnet-lite-pytorch 0.1.0), behind `x * 2 - 1` so that it takes [0, 1]
  pixels as the native model does; torch.onnx.export as above. Its TensorFlow "same" paddings are
  ZeroPad2d layers, which the exporter writes as Pad nodes fed by shape arithmetic
  (ConstantOfShape, Concat, Reshape, Slice with step -1, Transpose, Cast), and its flatten reads
  the batch size with Shape and Gather.
- mnist-linear-helper.onnx: models/mnist-linear.safetensors written node by node with
  onnx.helper (a second producer and another graph shape: Flatten, MatMul by the transposed
  weights, Add of the bias).
- ops-zoo.onnx: a small random CNN using the operators beyond SmallCNN's (see OpsZoo), with
  PyTorch's logits and input gradient on fixed inputs in ops-zoo-reference.safetensors.
- quantized-input.onnx: the linear model behind Round(x · 255) / 255, a gradient-masking
  preprocessing that `perturb inspect` must flag.
- bad-*.onnx: graphs perturb must refuse with a one-line reason: an unsupported operator
  (Erf), two inputs, a uint8 input.

PyTorch and onnx are needed to regenerate the files, not to run the tests; SHA256SUMS pins them.
"""
import hashlib
import os

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "onnx")


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Linear(1024, 200), nn.ReLU(), nn.Dropout(0.5), nn.Linear(200, 200), nn.ReLU(),
            nn.Linear(200, 10))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def export_cnn():
    model = SmallCNN()
    model.load_state_dict(load_file(os.path.join(ROOT, "models", "mnist-cnn.safetensors")))
    model.eval()
    torch.onnx.export(
        model, (torch.zeros(1, 1, 28, 28),), os.path.join(OUT, "mnist-cnn.onnx"),
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17, dynamo=False)


def export_efficientnet():
    from efficientnet_lite_pytorch import EfficientNet

    class Pixels(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x * 2.0 - 1.0)

    net = EfficientNet.from_name("efficientnet-lite0")
    state = load_file(os.path.join(ROOT, "models", "efficientnet-lite0.safetensors"))
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), missing
    net.eval()
    torch.onnx.export(
        Pixels(net), (torch.zeros(1, 3, 224, 224),), os.path.join(OUT, "efficientnet-lite0.onnx"),
        input_names=["pixels"], output_names=["logits"],
        dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17, dynamo=False)


def linear_graph(name, nodes, inputs, extra_init=()):
    w = load_file(os.path.join(ROOT, "models", "mnist-linear.safetensors"))
    init = [numpy_helper.from_array(w["fc.weight"].numpy().T.copy(), "w_t"),
            numpy_helper.from_array(w["fc.bias"].numpy(), "b"), *extra_init]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph(nodes, name, inputs, [out], init)
    model = helper.make_model(graph, producer_name="onnx.helper",
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(OUT, name + ".onnx"))


def main():
    os.makedirs(OUT, exist_ok=True)
    export_cnn()
    export_efficientnet()
    export_ops_zoo()
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])
    plain = [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w_t"], ["z"]),
             helper.make_node("Add", ["z", "b"], ["logits"])]
    linear_graph("mnist-linear-helper", plain, [image])
    linear_graph("bad-unsupported", plain[:2] + [helper.make_node("Erf", ["z"], ["e"]),
                                                 helper.make_node("Add", ["e", "b"], ["logits"])],
                 [image])
    second = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, 28, 28])
    linear_graph("bad-two-inputs",
                 [helper.make_node("Mul", ["image", "mask"], ["masked"]),
                  helper.make_node("Flatten", ["masked"], ["flat"], axis=1)] + plain[1:],
                 [image, second])
    # input quantisation, Round(x · 255) / 255, before the linear model: no gradient passes Round
    levels = numpy_helper.from_array(np.array(255.0, dtype=np.float32), "levels")
    linear_graph("quantized-input",
                 [helper.make_node("Mul", ["image", "levels"], ["scaled"]),
                  helper.make_node("Round", ["scaled"], ["rounded"]),
                  helper.make_node("Div", ["rounded", "levels"], ["quantized"]),
                  helper.make_node("Flatten", ["quantized"], ["flat"], axis=1)] + plain[1:],
                 [image], [levels])
    bytes_in = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 1, 28, 28])
    linear_graph("bad-uint8-input",
                 [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
                  helper.make_node("Flatten", ["f"], ["flat"], axis=1)] + plain[1:],
                 [bytes_in])
    with open(os.path.join(OUT, "SHA256SUMS"), "w") as sums:
        for name in sorted(os.listdir(OUT)):
            if name.endswith(".onnx") or name.endswith(".safetensors"):
                with open(os.path.join(OUT, name), "rb") as f:
                    sums.write(f"{hashlib.sha256(f.read()).hexdigest()}  {name}\n")



class OpsZoo(nn.Module):
    """A small random CNN whose export uses the operators beyond SmallCNN's: strided, padded and
    grouped convolutions (batch norm, which the exporter folds into the stem), HardSwish,
    LeakyReLU, Sigmoid, padded max- and average-pooling, a squeeze-and-excitation product,
    concatenation, mean reduction."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.branch = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.se = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = nn.functional.hardswish(self.bn(self.stem(x)))
        h = self.pool(h)
        a = nn.functional.leaky_relu(self.avg(h), 0.1)
        b = self.branch(h)
        h = torch.cat([a, b], dim=1)
        s = torch.sigmoid(self.se(h.mean(dim=(2, 3))))
        h = h * s.reshape(-1, 16, 1, 1)
        return self.fc(h.mean(dim=(2, 3)))


def export_ops_zoo():
    """ops-zoo.onnx and its reference: logits and the input gradient of Σ logits ⊙ r on fixed
    inputs, from PyTorch, in ops-zoo-reference.safetensors."""
    from safetensors.torch import save_file
    torch.manual_seed(21)
    model = OpsZoo()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.2, 0.2)
    model.eval()
    torch.onnx.export(
        model, (torch.zeros(1, 1, 28, 28),), os.path.join(OUT, "ops-zoo.onnx"),
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17, dynamo=False)
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    r = torch.rand(4, 10) - 0.5
    logits = model(x)
    (logits * r).sum().backward()
    save_file({"x": x.detach(), "r": r, "logits": logits.detach(), "grad": x.grad},
              os.path.join(OUT, "ops-zoo-reference.safetensors"))


if __name__ == "__main__":
    main()
