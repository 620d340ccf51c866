"""Time to quality: CPU minutes until a recipe's generator meets the convergence criteria, difflung vs the parent.

    .venv/bin/python benchmarks/bench_convergence.py                                    # full: 64x64, 16 patients
    .venv/bin/python benchmarks/bench_convergence.py --cap-min 10 --eval-every 250 --n-patients 10   # 2 cores
    .venv/bin/python benchmarks/bench_convergence.py --arm eps=difflung:prediction_type=epsilon --arm difflung

Every arm trains the same model (`--preset`, one-hot masks, CBMAT ablation) on the same phantom dataset at
`--size` (64 px: the size at which every class keeps its HU signature) with a named recipe
(`difflung.diffusion.recipes`), optionally with some fields replaced (a lever). Training stops every
`--eval-every` steps (`train_diffusion(stop_after=...)` checkpoints; the next call resumes bit-exactly, with
the cosine schedule over `--horizon` steps), and the newest checkpoint's weights are judged by the chapters'
one rule (`difflung.judging.criteria.measure` on a `scoring.generate_and_score` of every `--split` mask, with the
chapters' judge `scoring.judge`): the judge Dice ratio per measurable class (the judge's floor on the real slices
and chapter 1's HU-signature check at `--size`; two-sided), per-class HU Wasserstein-1 (for lesions also over
their HU contrast with lung in the training slices), the share of slices with air within 30 HU, and the
real-vs-generated classifier accuracy with its positive controls. The split is `val` by default, so a recipe is chosen without
looking at the test patients. The criteria use `--sampler` (DPM-Solver++ 20; repeat it, e.g. `--sampler dpm
--sampler dpm-sde`, to score more samplers, the first deciding time to quality), plus the air share with DDIM-50,
the judge's false positives of each judged rare class on real and generated slices (`fp/ggo=real/generated`
pixels: a ratio lost to lesion-like texture where the mask has none) and each class's fine texture, generated
over real (`tex/lung=0.72`: rendered too smooth). With an EMA both the EMA and the raw weights are scored (the
EMA lever for free). Time is the training process's CPU time (user + system,
all threads), evaluation excluded; an arm stops when its EMA (or raw) weights meet every criterion of the generator
(`quality`: the classifier's positive controls are instrument checks, shown but not timed), or at `--cap-min` CPU
minutes.

Output: one line per evaluation, then the time-to-quality table and the ratio of each arm of the parent's recipe
to the `difflung` arm ("not reached in N min" with the values at the cap). Each arm's evaluations are kept in
`<out>/<arm>/evals.jsonl`, so arms may run in separate processes into one `--out` and `--report` prints the table
of all of them.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parse_arm(text: str) -> tuple[str, str, dict]:
    """'label=recipe:field=value,field=value' (or just 'recipe') -> (label, recipe, overrides)."""
    label, _, rest = text.partition("=") if "=" in text.split(":")[0] else (text.split(":")[0], "", text)
    rec, _, fields = rest.partition(":")
    over = {}
    for item in filter(None, re.split(r",(?![^\[]*\])", fields)):  # commas inside [...] belong to a list
        k, _, v = item.partition("=")
        over[k] = None if v == "None" else json.loads(v) if v[:1] in "-0123456789[{" else v
    return label, rec or label, over


def dataset(args):
    """The benchmark's phantom dataset, built once into `<out>/data_<n>p_<size>px/dataset` with chapter 1's
    HU-signature check beside it (`hu_signature.json`, `difflung.data.phantom_dataset.hu_signature`), then reused."""
    from difflung.data.dataset import Dataset
    from difflung.data.phantom_dataset import build_phantom, hu_signature
    from difflung.judging.instruments import SIGNATURE_FILE

    root = Path(args.out) / f"data_{args.n_patients}p_{args.size}px"
    if (root / "dataset" / "manifest.json").is_file():
        ds = Dataset(root / "dataset")
        ph = ds.manifest["params"]["phantom_config"]
        if (ph["slices_per_patient"], ph["size"]) != (args.slices, args.phantom_size):
            raise ValueError(f"{root}: cached dataset has {ph['slices_per_patient']} slices per patient at phantom "
                             f"size {ph['size']}, not --slices {args.slices} --phantom-size {args.phantom_size}; "
                             f"use another --out")
        if (root / SIGNATURE_FILE).is_file():
            return ds
    # built from the seed alone: a rebuild (a cached dataset from before the signature check) writes the same bytes
    ds, volumes = build_phantom(root, n_patients=args.n_patients, slices_per_patient=args.slices,
                                phantom_size=args.phantom_size, size=args.size, seed=args.seed)
    hu_signature(ds, volumes, root)
    return ds


def signature(args) -> dict[str, tuple[bool, str]]:
    """The classes whose HU signature survives at `--size` (`dataset` writes the check)."""
    from difflung.judging.instruments import read_signature

    return read_signature(Path(args.out) / f"data_{args.n_patients}p_{args.size}px")


DDIM50 = "ddim-50"  # the second look at air: a deterministic 50-step solver


def evaluate(model_dir, ds, judge, sig, args) -> list[dict]:
    """Score the newest checkpoint on the `--split` masks by the chapters' rule (`scoring.generate_and_score`,
    then `criteria.measurable_classes` and `criteria.measure`): the criteria with each of args.samplers (the first
    decides time to quality), the air share with DDIM-50; EMA and raw weights."""
    from difflung.diffusion.train import checkpoint_model
    from difflung.generators import DIFFUSION, Generator
    from difflung.judging.criteria import measurable_classes, measure
    from difflung.judging.scoring import generate_and_score

    train, train_labels = ds.split("train").images, ds.split("train").labels  # labels: lesions' HU contrast
    rows = []
    for ema in (True, False):
        unet, meta = checkpoint_model(model_dir, ds, ema=ema)
        if rows and meta["weights"] == rows[-1]["weights"]:
            break  # no EMA (raw scored already), or a finished model (EMA weights only)
        gens = [Generator(key, DIFFUSION, Path(model_dir), meta, unet, smp, n)
                for key, smp, n in [*((s, s, args.sampler_steps) for s in args.samplers), (DDIM50, "ddim", 50)]]
        scored = generate_and_score(gens, ds, judge, n_test=len(ds.split(args.split)), seeds=[args.seed],
                                    split=args.split)
        measurable = measurable_classes(scored, sig)
        res = {g.key: measure(scored, g.key, train=train, measurable=measurable, signature=sig, details=True,
                              train_labels=train_labels,
                              generator=torch.Generator().manual_seed(args.seed),
                              classifier_steps=1 if g.key == DDIM50 else args.classifier_steps) for g in gens}
        judged = [c for c, (ok, _) in measurable.items() if ok]
        for sampler in args.samplers:
            r, gen = res[sampler], scored.generated(sampler)
            rows.append({"step": meta["step"], "weights": meta["weights"], "sampler": sampler, "split": args.split,
                         "converged": r["converged"],
                         "criteria": {t.criterion: [t.value, bool(t.met)] for t in r["table"].itertuples()},
                         "memorisation": r["memorisation"],
                         "air_share_ddim50": float(res[DDIM50]["air"]["ok"].mean()),
                         "air_mean_hu": float(np.nanmean(r["air"]["generated_air"])),
                         "real_air_mean_hu": float(np.nanmean(r["air"]["real_air"])),
                         "false_positives": judge_false_positives(judge, scored.real, gen, scored.labels, judged),
                         "texture_ratio": texture_ratios(ds.classes, scored.real, gen, scored.labels)})
    return rows


def judge_false_positives(judge, real, generated, labels, judged) -> dict:
    """For each judged rare class: the judge's false-positive pixels on the real and the generated slices
    (`realism.judge_errors`), {class: [real, generated]}: a Dice ratio lost to lesion-like texture where the mask
    has no lesion shows as a generated count far above the real one."""
    from difflung import labels as L
    from difflung.judging.realism import judge_errors

    rare = [c for c in judged if c in L.BY_NAME and L.BY_NAME[c].pathology]
    if not rare:
        return {}
    per = (judge_errors(judge, real, generated, labels, rare).groupby(level="class").sum()
           .reindex(rare, fill_value=0))
    return {c: [int(per.loc[c, "real"]), int(per.loc[c, "generated"])] for c in rare}


def texture_ratios(classes, real, generated, labels) -> dict:
    """Fine texture (`realism.texture_ratio`) of the generated slices over the real ones, for lung and each rare
    class of `classes` present: below 1, the model renders the class too smooth."""
    from difflung import labels as L
    from difflung.data.dataset import unwindow
    from difflung.judging.realism import texture_ratio

    names = [n for n in L.names(classes) if n == "lung" or L.BY_NAME[n].pathology]
    return texture_ratio(unwindow(generated), unwindow(real), labels, names)["ratio"].to_dict()


def short(row: dict) -> str:
    parts = []
    for name, (v, met) in row["criteria"].items():
        tag = (name.replace("judge Dice ratio, ", "dice/").replace("HU Wasserstein-1, ", "W1/").replace(" (HU)", "")
               .replace("slices with air within 30 HU", "air").replace("real-vs-generated classifier accuracy", "clf")
               .replace("HU Wasserstein-1 / contrast with lung, ", "W1rel/")
               .replace("classifier detects positive control: ", "ctrl/"))
        parts.append(f"{tag}={v:.3g}{'' if met else '*'}")
    parts.append(f"air_ddim50={row['air_share_ddim50']:.2f} air_mean={row['air_mean_hu']:.0f}HU")
    parts += [f"fp/{c}={r}/{g}" for c, (r, g) in row.get("false_positives", {}).items()]
    parts += [f"tex/{c}={v:.2f}" for c, v in row.get("texture_ratio", {}).items()]
    return " ".join(parts)


CONTROL_PREFIX = "classifier detects positive control"  # rows that test the classifier, not the generator


def quality(row: dict) -> bool:
    """Time to quality's event: every criterion of the generator met. The positive-control rows check the
    classifier instrument (can it see +40 HU, a 1 px blur?), not the model: they are reported with each evaluation
    (`short`) but a classifier without that power cannot hold back a generator's time to quality."""
    crit = row.get("criteria")
    if not crit:
        return bool(row["converged"])
    return all(met for name, (_, met) in crit.items() if not name.startswith(CONTROL_PREFIX))


def badness(name: str, value: float) -> float:
    """How far a criterion's value is from ideal, lower better: the judge ratio two-sided (|log ratio|), HU
    distances and the classifier's accuracy as they are, the share of slices with air right negated."""
    if name.startswith("judge Dice ratio"):
        return abs(math.log(value)) if value > 0 else math.inf
    return -value if name.startswith("slices with air") else value


def matched(row: dict, target: dict | None) -> bool:
    """The matched-quality event (`--target`): every criterion the target evaluation met is met, and every one it
    missed is at least as close to ideal as the target's value there: the quality the target arm reached, not a
    lowered criterion. Without a target, `quality`."""
    if target is None:
        return quality(row)
    crit = row["criteria"]
    for name, (tv, tmet) in target["criteria"].items():
        if name.startswith(CONTROL_PREFIX):
            continue
        v, met = crit.get(name, (math.nan, False))
        if not (met if tmet else badness(name, v) <= badness(name, tv)):
            return False
    return True


def shortfall(row: dict, target: dict) -> list[str]:
    """The criteria on which `row` is not yet as good as `target` (`matched`'s rule), as "name value (target)"."""
    out = []
    for name, (tv, tmet) in target["criteria"].items():
        if name.startswith(CONTROL_PREFIX):
            continue
        v, met = row["criteria"].get(name, (math.nan, False))
        if not (met if tmet else badness(name, v) <= badness(name, tv)):
            out.append(f"{name} {v:.3g} ({tv:.3g})")
    return out


def target_rows(args) -> dict | None:
    """{(weights, sampler): the target arm's last evaluation} of `--target`'s finished arm in `--out`."""
    if not args.target:
        return None
    log = Path(args.out) / args.target / "evals.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
    if not rows or not rows[-1].get("final"):
        raise SystemExit(f"{log}: --target {args.target} needs that arm finished in --out first")
    last = {}
    for r in rows:
        last[(r["weights"], r.get("sampler", "dpm"))] = r
    return last


def run_arm(label: str, rec: str, over: dict, ds, judge, sig, args) -> list[dict]:
    from difflung.core.checkpoint import latest_checkpoint
    from difflung.diffusion.recipes import recipe_config
    from difflung.diffusion.train import train_diffusion

    out = Path(args.out) / label
    out.mkdir(parents=True, exist_ok=True)
    log = out / "evals.jsonl"
    cfg = recipe_config(rec, **{"preset": args.preset, "strategy": "cbmat", "steps": args.horizon, "seed": args.seed,
                                "checkpoint_every": 10**9, **over})
    done = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
    ckpt = latest_checkpoint(out / "model" / "checkpoints")
    at_log = ckpt is not None and done and ckpt.name == f"step_{done[-1]['step']:08d}.pt"  # else CPU time is lost
    if done and not args.fresh and done[-1]["config"] == cfg.result_key() and (done[-1].get("final") or at_log):
        if done[-1].get("final"):
            return done
        # an interrupted arm: training resumes bit-exactly from the checkpoint `stop_after` left, with the CPU
        # and wall minutes of the evaluations already logged
        rows, step, cpu, wall = done, done[-1]["step"], done[-1]["cpu_min"] * 60, done[-1]["wall_min"] * 60
        print(f"[{label}] resuming at step {step} ({cpu / 60:.2f} CPU min)", flush=True)
    else:
        log.write_text("")
        shutil.rmtree(out / "model", ignore_errors=True)  # every arm starts from step 0
        cpu = wall = 0.0
        rows, step = [], 0
    tgt = target_rows(args)
    while step < args.horizon:
        step = min(max(step + args.eval_every, args.eval_from), args.horizon)
        c0, w0 = cpu_seconds(), time.perf_counter()
        train_diffusion(ds, cfg, out / "model", device="cpu", progress=False, stop_after=step)
        cpu, wall = cpu + cpu_seconds() - c0, wall + time.perf_counter() - w0
        evals = evaluate(out / "model", ds, judge, sig, args)
        primary = [e for e in evals if e["sampler"] == args.samplers[0]]
        stop = (any(matched(e, tgt and tgt.get((e["weights"], e["sampler"]))) for e in primary)
                or cpu / 60 >= args.cap_min or step >= args.horizon)
        for e in evals:
            e.update(arm=label, recipe=rec, overrides=over, config=cfg.result_key(), cpu_min=cpu / 60,
                     wall_min=wall / 60, final=False)
            print(f"[{label}] step {e['step']:5d} {e['weights']:3s} {e['sampler']:7s} cpu {e['cpu_min']:6.2f} min "
                  f"{'QUALITY ' if quality(e) else ''}{short(e)}", flush=True)
        evals[-1]["final"] = stop
        rows += evals
        with log.open("a") as f:
            f.writelines(json.dumps(e) + "\n" for e in evals)
        if stop:
            break
    return rows


def logged_arms(out) -> dict[str, list[dict]]:
    """{arm: its logged evaluations} of every arm with rows in `out` (arms may run in separate processes)."""
    found = {p.parent.name: [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
             for p in sorted(Path(out).glob("*/evals.jsonl"))}
    return {k: v for k, v in found.items() if v}


def matched_summary(arms: dict[str, list[dict]], target: str, last: dict) -> None:
    """CPU minutes until each arm is as good as `target`'s last evaluation (`matched`), per weights and sampler,
    the target arm included (it may get there before its last evaluation), and the speed-up over the target."""
    print(f"\ntime to {target}'s quality at its last evaluation (training CPU minutes; a criterion {target} met must "
          "be met, one it missed must be at least as close to ideal)")
    for (w, smp), t in last.items():
        hit = {a: next((r for r in rows if r["weights"] == w and r.get("sampler", "dpm") == smp and matched(r, t)),
                       None) for a, rows in arms.items()}
        base = hit.get(target)
        for a, rows in arms.items():
            h = hit[a]
            if h is None:
                sel = [r for r in rows if r["weights"] == w and r.get("sampler", "dpm") == smp]
                when = f"not reached in {sel[-1]['cpu_min']:.1f} min (step {sel[-1]['step']})" if sel else "no rows"
                if sel and base is not None:  # how far from the target, at what share of its CPU
                    when += (f"; {base['cpu_min'] / sel[-1]['cpu_min']:.2f}x less CPU than {target}, short on: "
                             + "; ".join(shortfall(sel[-1], t)))
                print(f"  {a:24s} {w} {smp:7s}: {when}")
                continue
            ratio = f"  speed-up {base['cpu_min'] / h['cpu_min']:.2f}x" if base is not None else ""
            print(f"  {a:24s} {w} {smp:7s}: {h['cpu_min']:.1f} min (step {h['step']}){ratio}")


def summary(arms: dict[str, list[dict]], cap: float) -> None:
    """Time to quality per arm and weights, and the ratio of each parent-recipe arm to the `difflung` arm."""
    print("\ntime to quality (training CPU minutes until every criterion is met)")
    ttq = {}
    for label, rows in arms.items():
        for w in ("ema", "raw"):
            for smp in dict.fromkeys(r.get("sampler", "dpm") for r in rows):
                sel = [r for r in rows if r["weights"] == w and r.get("sampler", "dpm") == smp]
                if not sel:
                    continue
                hit = next((r for r in sel if quality(r)), None)
                tag = f"{label:24s} {w} {smp:7s}"
                if hit:
                    ttq[(label, w, smp)] = hit["cpu_min"]
                    print(f"  {tag}: {hit['cpu_min']:.1f} min (step {hit['step']})")
                else:
                    last, done = sel[-1], rows[-1].get("final")
                    why = f"cap {cap:g}" if done else "unfinished: arm still running or stopped"
                    print(f"  {tag}: not reached in {last['cpu_min']:.1f} min ({why}; step {last['step']}): "
                          f"{short(last)}")
    best = lambda a: min([v for (l, _, _), v in ttq.items() if l == a], default=math.nan)
    d = best("difflung")
    # every arm of the parent's recipe (one horizon per arm: a longer cap needs its own arm) against `difflung`
    parents = [a for a, rows in arms.items() if rows and rows[0].get("recipe") == "parent"]
    for a in parents if "difflung" in arms else []:
        p = best(a)
        if math.isfinite(d) and math.isfinite(p):
            print(f"ratio {a} / difflung: {p / d:.1f}x")
        elif math.isfinite(d):
            cap_p = max(r["cpu_min"] for r in arms[a])
            print(f"ratio {a} / difflung: > {cap_p / d:.1f}x ({a} not reached in {cap_p:.1f} min)")
        else:
            print(f"ratio {a} / difflung: not measurable (difflung not reached)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", action="append", help="label=recipe:field=value,... (default: difflung, parent)")
    ap.add_argument("--out", default="runs/bench_convergence")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-patients", type=int, default=16)
    ap.add_argument("--slices", type=int, default=8, help="slices per patient")
    ap.add_argument("--phantom-size", type=int, default=128)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--horizon", type=int, default=6000, help="steps of the LR schedule (and the step cap)")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-from", type=int, default=0,
                    help="first step evaluated (an evaluation costs minutes: skip steps that cannot be in time)")
    ap.add_argument("--cap-min", type=float, default=60.0, help="training CPU minutes per arm")
    ap.add_argument("--sampler", dest="samplers", action="append",
                    help="sampler of the criteria (repeatable: each is scored, the first decides time to quality; "
                         "default dpm)")
    ap.add_argument("--sampler-steps", type=int, default=20)
    ap.add_argument("--judge-steps", type=int, default=600, help="the judge's steps (the laptop profile: 2000)")
    ap.add_argument("--classifier-steps", type=int, default=300, help="the real-vs-generated classifier's steps")
    ap.add_argument("--split", default="val", choices=("val", "test"),
                    help="masks the criteria are measured on (val: a recipe is chosen without the test patients)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="retrain arms that already finished in --out")
    ap.add_argument("--target", help="a finished arm in --out: time to ITS quality at its last evaluation too "
                                     "(`matched`), and arms stop once they match it (a lever against the recipe "
                                     "when the recipe does not meet every criterion within its horizon)")
    ap.add_argument("--report", action="store_true", help="only print the table of the arms found in --out")
    args = ap.parse_args(argv)
    args.samplers = args.samplers or ["dpm"]
    if args.threads:
        torch.set_num_threads(args.threads)
    from difflung.judging.metrics import dice_per_class
    from difflung.judging import scoring

    specs = [parse_arm(a) for a in (args.arm or ["difflung", "parent"])]
    if args.report:
        found = logged_arms(args.out)
        summary(found, args.cap_min)
        if args.target:
            matched_summary(found, args.target, target_rows(args))
        return
    ds = dataset(args)
    sig = signature(args)
    # the chapters' judge (one training rule, reused by its key)
    judge = scoring.judge(ds, Path(args.out) / f"judge_{args.n_patients}p_{args.size}px", steps=args.judge_steps,
                          seed=args.seed, device="cpu")
    part = ds.split(args.split)
    if len(np.unique(part.patient)) < 2:  # the classifier criterion trains on some patients and tests on others
        raise ValueError(f"{ds.root}: the {args.split} split holds {len(np.unique(part.patient))} patient(s); the "
                         f"real-vs-generated classifier needs 2 or more: raise --n-patients")
    real = dice_per_class(judge.predict(part.images), part.labels, ds.classes).groupby("class")["dice"].mean()
    print(f"{args.split} split: {len(np.unique(part.patient))} patients, {len(part)} slices; judge Dice on its real "
          "slices: " + ", ".join(f"{c} {v:.2f}" for c, v in real.items()), flush=True)
    lost = [f"{c} ({why})" for c, (ok, why) in sig.items() if not ok]
    if lost:
        print("HU signature lost (not judged): " + "; ".join(lost), flush=True)
    arms = {label: run_arm(label, rec, over, ds, judge, sig, args) for label, rec, over in specs}
    summary(arms, args.cap_min)
    if args.target:
        matched_summary({**logged_arms(args.out), **arms}, args.target, target_rows(args))


if __name__ == "__main__":
    main()
