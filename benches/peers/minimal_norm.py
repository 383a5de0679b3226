"""perturb's minimum-norm L2 attacks (Carlini-Wagner L2, DeepFool) against torchattacks' CW and
DeepFool, on the same weights (MODEL, default mnist-cnn), the same digits (the first N MNIST test
digits) and the same thread count.

Each side attacks the digits the model classifies correctly and, per attack and digit, records
whether the adversarial digit is misclassified (fooled) and its L2 distance from the clean digit
(float64). Both sides check that every adversarial digit lies in the pixel box [0, 1]. Per attack
the output gives the digits attacked, the count fooled, the median and mean L2 over the fooled
digits, the seconds and the fooled digits; per pair of corresponding attacks it says whether
perturb fools every digit torchattacks fools (and lists those it misses) and, over the digits both
fool, the median L2 of each side and the ratio perturb / torchattacks.

"Corresponding parameters": torchattacks' CW has no binary search over c, so perturb runs
`binary_steps=1, c=1` and the same 100 Adam steps at lr 0.01 with kappa 0
(`torchattacks.CW(model, c=1, kappa=0, steps=100, lr=0.01)`); DeepFool runs 50 steps with
overshoot 0.02 over all 10 classes (`torchattacks.DeepFool(model, steps=50, overshoot=0.02)`).
perturb's own defaults (`--attack cw` with no parameters, i.e. with its binary search over c, and
`--attack ddn`) are extra rows, compared against torchattacks' CW. perturb's L2 budget is
PERTURB_EPS (default 28 = sqrt(784), the diameter of the pixel box and the largest L2 radius the
CLI accepts on 1x28x28 inputs), so the ball never binds and the attacks are minimum-norm.

Known weaknesses of torchattacks (3.5.1) that the figures reflect:
- DeepFool clamps to the box after every step and stops at the first iterate the model
  misclassifies; the per-step overshoot (not the paper's overshoot of the total perturbation) and
  the clamp can leave digits on or next to the decision boundary, or unfooled after 50 steps
  (`boundary_margin` below reports how close the fooled digits sit). It loops over the digits one
  by one with 10 backward passes per step (the Jacobian row by row).
- CW optimises w with x = (tanh(w) + 1) / 2, starting from w = atanh(2x - 1) with 2x - 1 clamped to
  [-1, 1]: pixels at exactly 0 or 1 start at w = -inf or +inf where tanh' = 0, so they never move,
  and MNIST digits are mostly 0 pixels (`l2sq_share_on_saturated_pixels` below). Its margin term
  takes max((1 - onehot) * logits), which counts the true class as logit 0, so once every other
  logit is negative the loss stops pushing before the digit is misclassified
  (`clean_all_other_logits_negative`). It returns early (for the whole batch) when the summed cost
  rose over the last steps/10 steps (`forward_images` < steps x digits shows it).

    cargo build --release
    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch torchattacks numpy safetensors
    THREADS=2 /tmp/peers/bin/python benches/peers/minimal_norm.py \\
        > benches/peers/minimal_norm_2core.json
    # torch side once, perturb side later against it:
    THREADS=2 SIDES=torch /tmp/peers/bin/python benches/peers/minimal_norm.py \\
        > benches/peers/minimal_norm_torch_2core.json
    THREADS=2 SIDES=perturb TORCH_JSON=benches/peers/minimal_norm_torch_2core.json \\
        /tmp/peers/bin/python benches/peers/minimal_norm.py > benches/peers/minimal_norm_2core.json

Environment: MODEL (default mnist-cnn), N (500 first test digits), THREADS (2), SIDES
(torch,perturb: which to run), BATCH (250 digits per batch on both sides), TORCH_JSON (read the
torch side from this earlier output instead of running it), PERTURB_EPS (28).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torchattacks
from safetensors.torch import load_file

import torch_pgd as peer

MODEL = os.environ.get("MODEL", "mnist-cnn")
N = int(os.environ.get("N", "500"))
BATCH = int(os.environ.get("BATCH", "250"))
SIDES = os.environ.get("SIDES", "torch,perturb").split(",")
TORCH_JSON = os.environ.get("TORCH_JSON")
PERTURB_EPS = os.environ.get("PERTURB_EPS", "28")
BINARY = os.path.join(peer.ROOT, "target", "release", "perturb")

CW = dict(c=1, kappa=0, steps=100, lr=0.01)
DEEPFOOL = dict(steps=50, overshoot=0.02)

# perturb rows: name -> (attack, --param pairs)
PERTURB_RUNS = {
    "cw": ("cw", [f"c={CW['c']}", "binary_steps=1", f"steps={CW['steps']}", f"lr={CW['lr']}",
                  f"kappa={CW['kappa']}"]),
    "deepfool": ("deepfool", [f"steps={DEEPFOOL['steps']}", f"overshoot={DEEPFOOL['overshoot']}",
                              "candidates=10"]),
    "cw-default": ("cw", []),
    "ddn-default": ("ddn", []),
}
# (perturb row, torchattacks row) pairs compared
PAIRS = [("cw", "cw"), ("deepfool", "deepfool"), ("cw-default", "cw"), ("ddn-default", "cw")]

BOUNDARY = 1e-3  # a fooled digit whose logit margin is below this sits on the boundary


def logits(model, x):
    with torch.no_grad():
        return torch.cat([model(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])


def box_excess(adv):
    """Largest excess over the pixel box [0, 1] (0 when inside)."""
    return max(0.0, (-adv).amax().item(), (adv - 1).amax().item())


def margins(z, y):
    """Largest other logit minus the true logit (> 0: misclassified)."""
    true = z.gather(1, y[:, None])[:, 0]
    other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def summarize(model, x, y, attacked, adv, fooled, seconds):
    """The per-attack block; `attacked` and `fooled` are boolean masks over all N digits."""
    fooled = fooled & attacked
    diff = adv.double() - x.double()
    l2 = diff.flatten(1).norm(dim=1)
    idx = fooled.nonzero().flatten().tolist()
    dist = [l2[i].item() for i in idx]
    margin = margins(logits(model, adv).double(), y)
    m = [margin[i].item() for i in idx]
    unfooled = (attacked & ~fooled).nonzero().flatten().tolist()
    saturated = (x == 0) | (x == 1)
    sq = diff.pow(2)[fooled]
    total = sq.sum().item()
    return {
        "attacked": int(attacked.sum()),
        "fooled": len(idx),
        "median_l2": statistics.median(dist) if dist else None,
        "mean_l2": statistics.fmean(dist) if dist else None,
        "seconds": seconds,
        "max_box_excess": box_excess(adv),
        # torch model's margin on the adversarials: how close to the boundary the fooled sit
        "boundary_margin": {
            "min": min(m) if m else None,
            "median": statistics.median(m) if m else None,
            "fooled_below_1e-3": sum(v < BOUNDARY for v in m),
            # exact ties: the verdict rests on argmax's tie-breaking
            "fooled_at_exact_tie": sum(v == 0 for v in m),
            # attacked, not fooled, but within 1e-3 of the boundary
            "unfooled_within_1e-3": sum(margin[i].item() > -BOUNDARY for i in unfooled),
        },
        "l2sq_share_on_saturated_pixels": (sq * saturated[fooled]).sum().item() / total if total else None,
        "fooled_digits": idx,
        "fooled_l2": [round(v, 7) for v in dist],
    }


def torch_side(model, x, y):
    clean = logits(model, x).argmax(1) == y
    idx = clean.nonzero().flatten()
    seen = [0]
    counting = [False]

    def hook(_module, inputs, _output):
        if counting[0]:
            seen[0] += inputs[0].shape[0]

    model.register_forward_hook(hook)
    attacks = {
        "cw": torchattacks.CW(model, **CW),
        "deepfool": torchattacks.DeepFool(model, **DEEPFOOL),
    }
    out = {"clean_correct": int(clean.sum())}
    for name, attack in attacks.items():
        adv = x.clone()
        seen[0], seconds = 0, 0.0
        for i in range(0, len(idx), BATCH):
            part = idx[i:i + BATCH]
            counting[0] = True
            t = time.perf_counter()
            res = attack(x[part], y[part])
            seconds += time.perf_counter() - t
            counting[0] = False
            if isinstance(res, tuple):  # DeepFool.forward_return_target_labels gives (adv, targets)
                res = res[0]
            adv[part] = res.detach()
        fooled = logits(model, adv).argmax(1) != y
        row = summarize(model, x, y, clean, adv, fooled, seconds)
        row["forward_images"] = seen[0]
        if name == "cw":
            z = logits(model, x)
            row["clean_all_other_logits_negative"] = int(
                (z.scatter(1, y[:, None], float("-inf")).amax(1) < 0)[clean].sum())
            row["unfooled_left_clean"] = int(((adv == x).flatten(1).all(1) & clean & ~fooled).sum())
        out[name] = row
        print(f"torch {name}: {row['fooled']}/{row['attacked']} fooled, median L2 "
              f"{row['median_l2']}, {seconds:.1f} s", file=sys.stderr)
    return out


def find_key(obj, key):
    """The first value of `key` anywhere in a JSON object (breadth first), or None."""
    queue = [obj]
    while queue:
        o = queue.pop(0)
        if isinstance(o, dict):
            if key in o:
                return o[key]
            queue.extend(o.values())
        elif isinstance(o, list):
            queue.extend(o)
    return None


def perturb_run(model, x, y, attack, params):
    with tempfile.TemporaryDirectory() as tmp:
        report, adv = os.path.join(tmp, "r.json"), os.path.join(tmp, "adv.safetensors")
        env = dict(os.environ, RAYON_NUM_THREADS=str(peer.THREADS))
        cmd = [BINARY, "attack", "--model", MODEL, "--attack", attack, "--norm", "l2",
               "--eps", PERTURB_EPS, "--n", str(N), "--batch-size", str(BATCH), "--quiet",
               "--json", report, "--save-adversarials", adv]
        for p in params:
            cmd += ["--param", p]
        print(" ".join(cmd), file=sys.stderr)
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=peer.ROOT, stdout=sys.stderr)
        seconds = time.perf_counter() - t
        r = json.load(open(report))
        saved = load_file(adv)
    assert torch.equal(saved["x"], x), "perturb attacked other digits"
    labels = saved["labels"].long()
    assert torch.equal(labels, y)
    attacked = saved["clean_predictions"].long() == labels
    fooled = saved["adversarial_predictions"].long() != labels
    x_adv = saved["x_adv"]
    row = summarize(model, x, y, attacked, x_adv, fooled, seconds)
    # perturb's verdicts against the torch model's on the same adversarials (boundary ties)
    torch_fooled = (logits(model, x_adv).argmax(1) != y) & attacked
    row["verdicts_differing_from_torch_model"] = (torch_fooled != (fooled & attacked)).nonzero().flatten().tolist()
    row["command"] = " ".join(cmd[1:])
    for key in ["gradient_evals", "forward_evals", "wall_time_s", "successes", "perturbation", "warnings"]:
        v = find_key(r, key)
        if v is not None:
            row[key] = v
    row["attack_reported"] = r.get("attack")
    return row


def perturb_side(model, x, y):
    out = {}
    for name, (attack, params) in PERTURB_RUNS.items():
        out[name] = perturb_run(model, x, y, attack, params)
        row = out[name]
        print(f"perturb {name}: {row['fooled']}/{row['attacked']} fooled, median L2 "
              f"{row['median_l2']}, {row['seconds']:.1f} s", file=sys.stderr)
    return out


def compare(p, t):
    pf = dict(zip(p["fooled_digits"], p["fooled_l2"]))
    tf = dict(zip(t["fooled_digits"], t["fooled_l2"]))
    both = sorted(set(pf) & set(tf))
    mp = statistics.median([pf[i] for i in both]) if both else None
    mt = statistics.median([tf[i] for i in both]) if both else None
    return {
        "perturb_fools_superset": set(tf) <= set(pf),
        "fooled_only_by_torchattacks": sorted(set(tf) - set(pf)),
        "fooled_only_by_perturb": sorted(set(pf) - set(tf)),
        "both_fooled": len(both),
        "median_l2_perturb": mp,
        "median_l2_torchattacks": mt,
        "median_l2_ratio_perturb_over_torchattacks": mp / mt if both and mt else None,
        "median_per_digit_l2_ratio": statistics.median([pf[i] / tf[i] for i in both if tf[i] > 0]) if both else None,
        "time_ratio_perturb_over_torchattacks": p["seconds"] / t["seconds"] if t["seconds"] else None,
    }


def main():
    torch.set_num_threads(peer.THREADS)
    torch.manual_seed(0)
    model = peer.load_cnn(MODEL)
    x, y = peer.mnist_test(N)
    out = {
        "model": MODEL, "n": N, "threads": peer.THREADS, "batch": BATCH, "norm": "l2",
        "perturb_eps": float(PERTURB_EPS), "torch": torch.__version__,
        "torchattacks": torchattacks.__version__,
        "torchattacks_params": {"cw": CW, "deepfool": DEEPFOOL},
    }
    if TORCH_JSON:
        earlier = json.load(open(TORCH_JSON))
        assert (earlier["model"], earlier["n"]) == (MODEL, N), "TORCH_JSON is for another model or N"
        out["torchattacks_results"] = earlier["torchattacks_results"]
        out["torchattacks_results_from"] = TORCH_JSON
    elif "torch" in SIDES:
        out["torchattacks_results"] = torch_side(model, x, y)
    if "perturb" in SIDES:
        out["perturb_results"] = perturb_side(model, x, y)
    if "perturb_results" in out and "torchattacks_results" in out:
        out["comparison"] = {
            f"perturb {p} vs torchattacks {t}": compare(out["perturb_results"][p], out["torchattacks_results"][t])
            for p, t in PAIRS
        }
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
