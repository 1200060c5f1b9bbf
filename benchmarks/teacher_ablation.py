"""Does each SSM part earn its place? The teacher trained with and without each part, same data, seed and steps.

Variants (`quantize.ssm.config.SSMConfig` fields on the "real" preset):
  full          TSP (sentence-encoder prototypes) + DPM (the public code's formulation) + output-level prior
  no_dpm        the fixed FACS prior: no prototype transfer, no learned mapping
  no_tsp        no prototype branch (linear heads only); DPM then only feeds the output-level prior
  no_out_prior  without the output-level prior (this project's addition, not SSM)
  plain_cnn     the same backbone with two linear heads: no TSP, no DPM, no output-level prior

Each is trained with `affect-quantize teacher train --config real --faces F --steps N` (resumable: a finished
variant is not trained again) and scored on the held-out half of the validation cache (FER2013 PublicTest
half B + London validation people + generated faces; nothing is fitted on it, AU thresholds come from half A):
expression accuracy and UAR on FER2013's own labels, AU macro-AUC against the MediaPipe targets, and the AU
sanity AUCs (each AU's output against its expression label), before and after the output-level prior.

    python benchmarks/teacher_ablation.py --faces CACHE/faces --work runs/ablation [--steps 3000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no_dpm": ['dpm="off"'],
    "no_tsp": ["tsp=false"],
    "no_out_prior": ["output_prior=false"],
    "plain_cnn": ['dpm="off"', "tsp=false", "output_prior=false"],
}
SANITY = ((12, "happiness"), (6, "happiness"), (4, "anger"), (15, "sadness"), (1, "surprise"), (2, "surprise"),
          (26, "surprise"), (9, "disgust"), (10, "disgust"))


def train(name: str, faces: Path, work: Path, steps: int, threads: int | None) -> Path:
    run = work / name
    cmd = [sys.executable, "-m", "quantize.cli", "teacher", "train", "--config", "real", "--faces", str(faces),
           "--steps", str(steps), "--batch", "64", "--seed", "0", "--val-every", str(steps), "--out", str(run),
           "--no-progress"]
    for item in VARIANTS[name]:
        cmd += ["--set", item]
    if threads:
        cmd += ["--threads", str(threads)]
    if not (run / "head.npz").is_file():  # the last thing a finished run writes
        print(f"ablation: training {name}: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return run


def score(run: Path) -> dict[str, Any]:
    import torch

    from quantize.metrics import au_report, calibrate_thresholds, fe_report, roc_auc
    from quantize.ssm.config import SSMConfig
    from quantize.ssm.model import SSMTeacher
    from quantize.train import checkpoint as ck
    from quantize.train.evaluate import predict
    from quantize.train.recipe import data_source
    from quantize.train.tensors import make_batch

    state = ck.load(run / ck.CHECKPOINT)
    model = SSMTeacher(SSMConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    model.eval()
    source = data_source(state["meta"])
    val, test = source.split("val"), source.split("holdout")
    thresholds = calibrate_thresholds(predict(model, val).au_prob, val.au, val.au_mask)
    pred = predict(model, test)
    fer = test.dataset == "fer2013"
    labels = model.cfg.labels
    au = au_report(pred.au_prob, pred.au, pred.au_mask, thresholds, labels.au_keys)
    fe = fe_report(pred.fe_prob[fer], test.fe[fer], list(labels.expressions))
    with torch.no_grad():  # the AU branch before the output-level prior
        raw = []
        for start in range(0, len(test), 256):
            batch = make_batch(test, torch.arange(start, min(start + 256, len(test))), gen=None)
            f, g = model.features(batch["image"])
            t_au, t_fe, mapping = model.prototypes()
            raw.append(torch.sigmoid(model.head(f, g[:, 0], t_au, t_fe, mapping).au_logits_raw).numpy())
    raw_au = np.concatenate(raw)
    sanity: dict[str, dict[str, float]] = {"after_prior": {}, "before_prior": {}}
    for number, expression in SANITY:
        positive = test.fe[fer] == labels.expressions.index(expression)
        a = labels.aus.index(number)
        sanity["after_prior"][f"AU{number}<->{expression}"] = roc_auc(pred.au_prob[fer, a], positive)
        sanity["before_prior"][f"AU{number}<->{expression}"] = roc_auc(raw_au[fer, a], positive)
    return {"steps": state["step"], "fe_accuracy": fe.accuracy, "uar": fe.uar, "au_auc": au.macro_auc,
            "au_f1": au.macro_f1, "fer_faces": int(fer.sum()), "au_sanity": sanity}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", choices=sorted(VARIANTS), action="append", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    names = args.only or list(VARIANTS)
    results = {name: score(train(name, args.faces, args.work, args.steps, args.threads)) for name in names}
    keys = [k for k, _ in ((f"AU{n}<->{e}", 0) for n, e in SANITY)]
    print(f"\nteacher ablation: {args.steps} steps each, seed 0; scored on FER2013 PublicTest half B "
          f"({next(iter(results.values()))['fer_faces']} faces) + validation faces (AU AUC)")
    print(f"{'variant':<14}{'FE acc':>8}{'UAR':>7}{'AU AUC':>8} | AU sanity after / before the output-level prior")
    for name, r in results.items():
        sanity = " ".join(f"{k.split('<->')[0]} {r['au_sanity']['after_prior'][k]:.2f}/"
                          f"{r['au_sanity']['before_prior'][k]:.2f}" for k in keys)
        print(f"{name:<14}{r['fe_accuracy']:>8.3f}{r['uar']:>7.3f}{r['au_auc']:>8.3f} | {sanity}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
