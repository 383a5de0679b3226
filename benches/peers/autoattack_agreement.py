"""perturb's standard suite against torchattacks' AutoAttack parts, on the same weights, digits and
thread count (issue 20, acceptance 3 and 5).

torchattacks' `AutoAttack` class runs its parts at 10 iterations, so this script runs the parts
themselves at the paper's settings, as AutoAttack's standard version does: APGD-CE (100 steps),
APGD-T (100 steps, 9 target classes), FAB-T (100 steps, 9 target classes) and Square (5,000
queries), one restart each, each on the digits the ones before left robust (the per-digit worst
case). perturb runs `perturb attack --suite standard` (release build) on the same digits; its
per-digit verdicts come from `--save-adversarials`. Both sides check that every adversarial
digit lies in the ε-ball and the pixel box.

    cargo build --release
    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch torchattacks numpy safetensors
    N=1000 THREADS=2 /tmp/peers/bin/python benches/peers/autoattack_agreement.py \\
        > benches/peers/autoattack_agreement_2core.json

Environment: MODEL (default mnist-cnn-fgsm-rs), EPS (0.3), N (1000 first test digits), THREADS (2),
SIDES (torch,perturb: which to run), BATCH (250 digits per batch on both sides).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torchattacks
from safetensors.torch import load_file

import torch_pgd as peer

MODEL = os.environ.get("MODEL", "mnist-cnn-fgsm-rs")
EPS = float(os.environ.get("EPS", "0.3"))
N = int(os.environ.get("N", "1000"))
BATCH = int(os.environ.get("BATCH", "250"))
SIDES = os.environ.get("SIDES", "torch,perturb").split(",")
BINARY = os.path.join(peer.ROOT, "target", "release", "perturb")


def predict(model, x):
    with torch.no_grad():
        return torch.cat([model(x[i:i + BATCH]).argmax(1) for i in range(0, len(x), BATCH)])


def inside(x, adv):
    """Largest excess over the ε-ball and the pixel box (0 when inside)."""
    ball = ((adv - x).abs().amax() - EPS).clamp(min=0).item()
    box = max((-adv).amax().item(), (adv - 1).amax().item(), 0.0)
    return max(ball, box)


def torch_side(model, x, y):
    common = dict(norm="Linf", eps=EPS, n_restarts=1, seed=0)
    stages = [
        ("apgd", torchattacks.APGD(model, steps=100, loss="ce", **common)),
        ("apgd-t", torchattacks.APGDT(model, steps=100, n_classes=10, **common)),
        ("fab-t", torchattacks.FAB(model, steps=100, multi_targeted=True, n_classes=10, **common)),
        ("square", torchattacks.Square(model, n_queries=5000, p_init=0.8, **common)),
    ]
    start = time.perf_counter()
    robust = predict(model, x) == y
    clean = int(robust.sum())
    rows, excess = [], 0.0
    for name, attack in stages:
        t = time.perf_counter()
        idx = robust.nonzero().flatten()
        for i in range(0, len(idx), BATCH):
            part = idx[i:i + BATCH]
            adv = attack(x[part], y[part])
            excess = max(excess, inside(x[part], adv))
            fooled = predict(model, adv) != y[part]
            robust[part[fooled]] = False
        rows.append({"attack": name, "robust": int(robust.sum()), "seconds": time.perf_counter() - t})
        print(f"torch {name}: {rows[-1]}", file=sys.stderr)
    return {
        "clean": clean,
        "robust": int(robust.sum()),
        "seconds": time.perf_counter() - start,
        "stages": rows,
        "max_budget_excess": excess,
        "robust_digits": robust.nonzero().flatten().tolist(),
    }


def perturb_side(x, y):
    with tempfile.TemporaryDirectory() as tmp:
        report, adv = os.path.join(tmp, "r.json"), os.path.join(tmp, "adv.safetensors")
        env = dict(os.environ, RAYON_NUM_THREADS=str(peer.THREADS))
        t = time.perf_counter()
        subprocess.run(
            [BINARY, "attack", "--model", MODEL, "--suite", "standard", "--eps", str(EPS),
             "--n", str(N), "--batch-size", str(BATCH), "--quiet", "--json", report,
             "--save-adversarials", adv],
            check=True, env=env, cwd=peer.ROOT, stdout=sys.stderr,
        )
        seconds = time.perf_counter() - t
        r = json.load(open(report))
        saved = load_file(adv)
    assert torch.equal(saved["x"], x), "perturb attacked other digits"
    labels = saved["labels"].long()
    assert torch.equal(labels, y)
    robust = (saved["clean_predictions"].long() == labels) & (saved["adversarial_predictions"].long() == labels)
    stages = [{"attack": s["attack"], "robust": s["robust_correct"]} for s in r.get("stages", [])]
    return {
        "clean": r["clean_correct"],
        "robust": int(robust.sum()),
        "seconds": seconds,
        "stages": stages,
        "max_budget_excess": inside(x, saved["x_adv"]),
        "robust_digits": robust.nonzero().flatten().tolist(),
    }


def main():
    torch.set_num_threads(peer.THREADS)
    torch.manual_seed(0)
    model = peer.load_cnn(MODEL)
    x, y = peer.mnist_test(N)
    out = {
        "model": MODEL, "eps": EPS, "norm": "linf", "n": N, "threads": peer.THREADS,
        "torch": torch.__version__, "torchattacks": torchattacks.__version__,
    }
    if "perturb" in SIDES:
        out["perturb"] = perturb_side(x, y)
        print(f"perturb: {out['perturb']['robust']} robust, {out['perturb']['seconds']:.0f} s", file=sys.stderr)
    if "torch" in SIDES:
        out["torchattacks"] = torch_side(model, x, y)
    if "perturb" in out and "torchattacks" in out:
        a, b = set(out["perturb"]["robust_digits"]), set(out["torchattacks"]["robust_digits"])
        out["agreement"] = {
            "robust_accuracy_points": 100.0 * (len(a) - len(b)) / N,
            "robust_only_under_perturb": sorted(a - b),
            "robust_only_under_torchattacks": sorted(b - a),
            "time_ratio_perturb_over_torchattacks": out["perturb"]["seconds"] / out["torchattacks"]["seconds"],
        }
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
