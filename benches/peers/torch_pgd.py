"""Time the shipped models in PyTorch + torchattacks on this machine, for the README's side-by-side
table with perturb (issue 6). Same weights (the safetensors in models/), same inputs (the first
MNIST test digits; the sample photos for EfficientNet-Lite0), same thread count.

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch torchattacks numpy safetensors \
        pillow efficientnet-lite-pytorch==0.1.0
    THREADS=2 /tmp/peers/bin/python benches/peers/torch_pgd.py > benches/peers/torch.json

Each figure: median milliseconds of REPS runs (default 10) after two warm-ups.
forward = no-grad forward; loss_grad = forward + backward of the summed cross-entropy w.r.t. the
input; pgd10 = torchattacks.PGD(eps, alpha = 2.5 eps / 10, steps = 10, random_start = True),
which is what perturb's Pgd::new(Budget::linf(eps)).steps(10) does.
"""

import gzip
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torchattacks
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THREADS = int(os.environ.get("THREADS", "2"))
REPS = int(os.environ.get("REPS", "10"))


def small_cnn():
    return nn.Sequential(
        nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        ),
        nn.Flatten(),
        nn.Sequential(
            nn.Linear(1024, 200), nn.ReLU(), nn.Dropout(0.5), nn.Linear(200, 200), nn.ReLU(),
            nn.Linear(200, 10),
        ),
    )


def load_cnn(name):
    model = small_cnn()
    state = load_file(os.path.join(ROOT, "models", f"{name}.safetensors"))
    model[0].load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    model[2].load_state_dict({k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")})
    return model.eval()


def mnist_test(n):
    with gzip.open(os.path.join(ROOT, "data", "mnist", "t10k-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(os.path.join(ROOT, "data", "mnist", "t10k-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))


def median_ms(fn):
    for _ in range(2):
        fn()
    times = []
    for _ in range(REPS):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def bench(name, model, x, y, eps):
    def forward():
        with torch.no_grad():
            model(x)

    def loss_grad():
        xi = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xi), y, reduction="sum")
        torch.autograd.grad(loss, xi)

    pgd = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 10, steps=10, random_start=True)

    def pgd10():
        pgd(x, y)

    row = {
        "model": name,
        "batch": int(x.shape[0]),
        "threads": THREADS,
        "torch": torch.__version__,
        "torchattacks": torchattacks.__version__,
        "forward_ms": median_ms(forward),
        "loss_grad_ms": median_ms(loss_grad),
        "pgd10_ms": median_ms(pgd10),
    }
    row["pgd10_images_per_s"] = row["batch"] / (row["pgd10_ms"] / 1e3)
    print(json.dumps(row), file=sys.stderr)
    return row


def load_efficientnet():
    """EfficientNet-Lite0 with the shipped weights, behind perturb's wrapper (pixels in [0, 1])."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = load_file(os.path.join(ROOT, "models", "efficientnet-lite0.safetensors"))
    net.load_state_dict(state, strict=False)  # the num_batches_tracked counters are not shipped
    net.eval()

    class Pixels(nn.Module):  # perturb's wrapper: pixels in [0, 1] → [-1, 1]
        def forward(self, x):
            return net(x * 2 - 1)

    return Pixels().eval()


def photo_batch(model, n):
    """The five sample photos (224 × 224 centre crops) repeated to n, labelled by the model."""
    from PIL import Image

    photos = []
    for p in ["chelsea", "coffee", "rocket", "astronaut", "motorcycle_left"]:
        img = np.asarray(Image.open(os.path.join(ROOT, "assets", "images", f"{p}.png")).convert("RGB"))
        h, w, _ = img.shape
        t, l = (h - 224) // 2, (w - 224) // 2
        photos.append(torch.from_numpy(img[t:t + 224, l:l + 224].astype(np.float32) / 255).permute(2, 0, 1))
    x = torch.stack([photos[i % 5] for i in range(n)])
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


def main():
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    rows = []
    for name in ["mnist-cnn", "mnist-cnn-fgsm-rs"]:
        model = load_cnn(name)
        for n in [1, 32, 128]:
            x, y = mnist_test(n)
            rows.append(bench(name, model, x, y, 0.1))
    if os.environ.get("EFFICIENTNET", "1") == "1":
        model = load_efficientnet()
        for n in [1, 8]:
            x, y = photo_batch(model, n)
            rows.append(bench("efficientnet-lite0", model, x, y, 2 / 255))
    json.dump(rows, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
