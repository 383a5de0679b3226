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
- squeezenet-caffe2.onnx: a graph from another exporter, found in a PyPI package: the `onnx`
  package's own test model onnx/backend/test/data/light/light_squeezenet.onnx (SqueezeNet 1.0,
  written by onnx-caffe2 at opset 9: a probability output through Softmax, scores shaped
  [1, 1000, 1, 1], Dropout with a ratio, 224x224 at a fixed batch of 1). Its "light" weights are
  ConstantOfShape nodes filling every tensor with 0.02, which makes all 1,000 outputs 0.001; they
  are replaced by seeded random weights (He-normal, biases 0.01) as initializers of the same
  names, nothing else changed. squeezenet-caffe2-reference.safetensors holds the onnx package's
  reference evaluator's scores (before the Softmax) and opset 9's probabilities from them on two
  random inputs (no PyTorch in these figures).
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


def export_squeezenet():
    from onnx.reference import ReferenceEvaluator
    from safetensors.numpy import save_file

    light = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                         "light_squeezenet.onnx")
    model = onnx.load(light)
    rng = np.random.default_rng(2019)
    kept = []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape":
            kept.append(node)
            continue
        shape_name = node.input[0]
        shape = next(numpy_helper.to_array(t) for t in model.graph.initializer
                     if t.name == shape_name)
        if len(shape) == 4:  # conv weights [O, C, K, K]
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
        else:
            value = np.full(shape, 0.01)
        model.graph.initializer.append(
            numpy_helper.from_array(value.astype(np.float32), node.output[0]))
        # IR version 3: every initializer is also a graph input, as Caffe2's files list them
        model.graph.input.append(helper.make_tensor_value_info(
            node.output[0], TensorProto.FLOAT, [int(d) for d in shape]))
    used = {i for n in kept for i in n.input}
    shapes = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(shapes)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    # the shape tensors of the ConstantOfShape nodes leave the graph's inputs with them
    names = {t.name for t in model.graph.initializer}
    listed = [i for i in model.graph.input if i.name in names or not i.name.endswith("__SHAPE")]
    del model.graph.input[:]
    model.graph.input.extend(listed)
    onnx.checker.check_model(model)
    out = os.path.join(OUT, "squeezenet-caffe2.onnx")
    onnx.save(model, out)
    # The reference evaluator's Softmax gives 1.0 for every class here: it does not apply
    # opset 9's semantics (the input flattened to [N, 1000] from axis 1), which the package's own
    # expected output for the light model follows (0.001 for every class). So it evaluates the
    # graph up to the scores, and the probabilities are opset 9's softmax of those in numpy.
    scores_graph = onnx.load(out)
    final = scores_graph.graph.node[-1]
    assert final.op_type == "Softmax"
    scores_graph.graph.output[0].name = final.input[0]
    del scores_graph.graph.node[-1]
    ref = ReferenceEvaluator(scores_graph)
    weights = {t.name for t in model.graph.initializer}
    data = next(i.name for i in model.graph.input if i.name not in weights)
    inputs = {}
    for k in range(2):
        x = rng.random((1, 3, 224, 224), dtype=np.float32)
        (scores,) = ref.run(None, {data: x})
        scores = scores.reshape(1, -1).astype(np.float64)
        probs = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        inputs[f"x{k}"] = x
        inputs[f"scores{k}"] = scores.astype(np.float32)
        inputs[f"probs{k}"] = probs.astype(np.float32)
    save_file(inputs, os.path.join(OUT, "squeezenet-caffe2-reference.safetensors"))


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
    export_squeezenet()
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
