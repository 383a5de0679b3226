"""PGD-10 on the shipped models, PyTorch + torchattacks against perturb, in alternating rounds on
the same machine and thread count (issue 6, acceptance 3: the MNIST CNNs; EfficientNet-Lite0 with
MODELS=efficientnet-lite0 BATCHES=8,32, batches that examples/device_bench times).

A shared machine's speed drifts by 10-20 % over minutes, so one figure per side measured minutes
apart compares the machine with itself as much as the two libraries. Here each round times
torchattacks (in this process) and then perturb (examples/device_bench, a fresh process) back to
back; the verdict is the median over rounds of perturb's throughput divided by torch's.

    cargo build --release --example device_bench
    THREADS=2 ROUNDS=7 /tmp/peers/bin/python benches/peers/side_by_side.py > benches/peers/side_by_side_2core.json

(the venv as in torch_pgd.py). REPS (default 11) PGD-10 runs per side and round, median taken.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

import torchattacks

import torch_pgd as peer

ROUNDS = int(os.environ.get("ROUNDS", "7"))
REPS = int(os.environ.get("REPS", "11"))
BATCHES = [int(b) for b in os.environ.get("BATCHES", "32,128").split(",")]
MODELS = os.environ.get("MODELS", "mnist-cnn,mnist-cnn-fgsm-rs").split(",")
BENCH = os.path.join(peer.ROOT, "target", "release", "examples", "device_bench")


def torch_pgd10_ms(model, x, y, eps):
    pgd = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 10, steps=10, random_start=True)
    return peer.median_ms(lambda: pgd(x, y))


def perturb_pgd10_ms(name):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = dict(os.environ, RAYON_NUM_THREADS=str(peer.THREADS))
        subprocess.run(
            [BENCH, "--model", name, "--reps", "1", "--pgd-reps", str(REPS), "--json", out.name],
            check=True, env=env, stdout=subprocess.DEVNULL, cwd=peer.ROOT,
        )
        rows = json.load(open(out.name))
    return {r["batch"]: r["pgd10_ms"] for r in rows}


def main():
    peer.torch.set_num_threads(peer.THREADS)
    peer.torch.manual_seed(0)
    peer.REPS = REPS
    models = {name: peer.load_efficientnet() if name.startswith("efficientnet") else peer.load_cnn(name)
              for name in MODELS}
    data = {(name, n): peer.photo_batch(models[name], n) if name.startswith("efficientnet")
            else peer.mnist_test(n) for name in MODELS for n in BATCHES}
    rounds = []
    for r in range(ROUNDS):
        for name in MODELS:
            ours = perturb_pgd10_ms(name)
            for n in BATCHES:
                if n not in ours:
                    continue
                eps = 2 / 255 if name.startswith("efficientnet") else 0.1
                theirs = torch_pgd10_ms(models[name], *data[(name, n)], eps)
                row = {"round": r, "model": name, "batch": n, "torch_pgd10_ms": theirs,
                       "perturb_pgd10_ms": ours[n], "speedup": theirs / ours[n]}
                print(json.dumps(row), file=sys.stderr)
                rounds.append(row)
    summary = []
    for name in MODELS:
        for n in BATCHES:
            rows = [x for x in rounds if x["model"] == name and x["batch"] == n]
            if not rows:
                continue
            summary.append({
                "model": name, "batch": n, "rounds": len(rows),
                "median_speedup": statistics.median(x["speedup"] for x in rows),
                "rounds_perturb_faster": sum(x["speedup"] >= 1 for x in rows),
                "median_torch_pgd10_ms": statistics.median(x["torch_pgd10_ms"] for x in rows),
                "median_perturb_pgd10_ms": statistics.median(x["perturb_pgd10_ms"] for x in rows),
            })
    json.dump({"threads": peer.THREADS, "torch": peer.torch.__version__,
               "torchattacks": torchattacks.__version__, "reps": REPS,
               "summary": summary, "rounds": rounds}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
