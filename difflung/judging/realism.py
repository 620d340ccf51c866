"""Metrics that separate generators honestly: region PSNR/SSIM, per-class HU distance, air, two-sample classifier,
memorisation. None needs downloaded weights.

Conventions: images in the model window are [-1, 1] <-> HU [-1000, 400] (data range 2.0, as in
`metrics.psnr_ssim`); HU metrics take HU arrays (convert with `diffusion.sample.to_hu`). A generated slice is
paired with the real slice whose mask it was generated from, so both share one label map.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from difflung import labels as L
from difflung.judging.metrics import DATA_RANGE

SSIM_WIN = 7  # skimage's default window; SSIM is undefined within 3 px of the border


def _pairs(generated, real) -> tuple[np.ndarray, np.ndarray]:
    g, r = np.asarray(generated, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if g.ndim == 2:
        g, r = g[None], r[None]
    if g.shape != r.shape or g.ndim != 3:
        raise ValueError(f"generated {g.shape} and real {r.shape} must both be (N, S, S)")
    return g, r


def region_masks(labels) -> dict[str, np.ndarray]:
    """(N, S, S) label maps -> the regions scored: full frame, body (not background), lung (in-lung classes)."""
    lab = np.asarray(labels)
    return {"full": np.ones(lab.shape, bool), "body": lab != L.BACKGROUND, "lung": np.isin(lab, L.LUNG_IDS)}


def masked_psnr_ssim(generated, real, mask, data_range: float = DATA_RANGE) -> pd.DataFrame:
    """PSNR (dB) and SSIM of each generated slice against its real slice, inside a region.

    PSNR is skimage's peak_signal_noise_ratio on the region's pixels; SSIM is the mean of skimage's SSIM map
    (structural_similarity, full=True) over the region, excluding the 3-pixel border where skimage's own mean
    excludes it, so an all-ones mask gives exactly the full-frame values.

    Args:
        generated, real: (N, S, S) or (S, S) in [-1, 1] (clipped); data_range 2.0 for that window.
        mask: bool array of the same shape: the region.
    Returns:
        DataFrame image, psnr, ssim; NaN for a slice whose region is empty.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g, r = _pairs(np.clip(generated, -1, 1), np.clip(real, -1, 1))
    m = np.asarray(mask, bool).reshape(g.shape)
    p = (SSIM_WIN - 1) // 2
    rows = []
    for i in range(len(g)):
        psnr = ssim = math.nan
        if m[i].any():
            with np.errstate(divide="ignore"):  # identical region: +inf
                psnr = float(peak_signal_noise_ratio(r[i][m[i]], g[i][m[i]], data_range=data_range))
            _, smap = structural_similarity(r[i], g[i], data_range=data_range, win_size=SSIM_WIN, full=True)
            inner = m[i][p:-p, p:-p]
            ssim = float(smap[p:-p, p:-p][inner].mean(dtype=np.float64)) if inner.any() else math.nan
        rows.append({"image": i, "psnr": psnr, "ssim": ssim})
    return pd.DataFrame(rows, columns=["image", "psnr", "ssim"])


def region_quality(generated, real, labels, data_range: float = DATA_RANGE) -> pd.DataFrame:
    """PSNR/SSIM full-frame, inside the body and inside the lung: rows (image, region, psnr, ssim)."""
    g, _ = _pairs(generated, real)
    out = []
    for name, mask in region_masks(np.asarray(labels).reshape(g.shape)).items():
        df = masked_psnr_ssim(generated, real, mask, data_range)
        df.insert(1, "region", name)
        out.append(df)
    return pd.concat(out, ignore_index=True)


def hu_wasserstein(generated_hu, real_hu, labels, classes: Sequence[str | int]) -> dict[str, float]:
    """Per-class Wasserstein-1 distance (HU) between generated and real HU values inside the class.

    Args:
        generated_hu, real_hu: (N, S, S) HU. labels: (N, S, S) the shared label maps. classes: names or ids.
    Returns:
        class name -> W1 in HU (scipy.stats.wasserstein_distance over the pooled pixels); NaN if absent.
    """
    from scipy.stats import wasserstein_distance

    g, r = _pairs(generated_hu, real_hu)
    lab = np.asarray(labels).reshape(g.shape)
    out = {}
    for c in classes:
        cid = L.class_id(c)
        sel = lab == cid
        out[L.BY_ID[cid].name] = float(wasserstein_distance(g[sel], r[sel])) if sel.any() else math.nan
    return out


def texture(hu, labels, classes: Sequence[str | int]) -> dict[str, float]:
    """Fine texture per class: the standard deviation (HU) of each pixel's difference from its 3x3 mean, over the
    pixels whose 3x3 neighbourhood lies inside the class (so edges between classes do not count).

    A generator can match a class's HU histogram (`hu_wasserstein`) with too smooth an image: CT noise and fine
    structure (reticulation, small vessels) then read as haze, which a segmenter may take for ground glass.
    Compare generated with real slices of the same masks.

    Args:
        hu: (N, S, S) HU. labels: (N, S, S) label maps. classes: names or ids.
    Returns:
        class name -> high-pass standard deviation in HU; NaN where no pixel qualifies.
    """
    from scipy import ndimage

    x = np.asarray(hu, dtype=np.float64)
    lab = np.asarray(labels).reshape(x.shape)
    if x.ndim == 2:
        x, lab = x[None], lab[None]
    high = x - ndimage.uniform_filter(x, size=(1, 3, 3), mode="nearest")
    out = {}
    for c in classes:
        cid = L.class_id(c)
        inner = ndimage.binary_erosion(lab == cid, structure=np.ones((1, 3, 3), bool))
        out[L.BY_ID[cid].name] = float(high[inner].std()) if inner.any() else math.nan
    return out


def air_check(generated_hu, real_hu, labels, tolerance_hu: float = 30.0) -> pd.DataFrame:
    """Per slice: mean HU of the background (air) in the generated and in the real slice, and whether they agree
    within `tolerance_hu`. Rows (image, generated_air, real_air, ok); ok is False where there is no background."""
    g, r = _pairs(generated_hu, real_hu)
    bg = np.asarray(labels).reshape(g.shape) == L.BACKGROUND
    n = bg.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        ga = np.where(n > 0, (g * bg).sum(axis=(1, 2)) / n, np.nan)
        ra = np.where(n > 0, (r * bg).sum(axis=(1, 2)) / n, np.nan)
    ok = np.abs(ga - ra) <= tolerance_hu  # NaN compares False
    return pd.DataFrame({"image": np.arange(len(g)), "generated_air": ga, "real_air": ra, "ok": ok})


# ---------------------------------------------------------------------------------------------------------------
# classifier two-sample test

class _SmallCNN(nn.Module):
    """A few strided convolutions and a linear head: real (1) vs generated (0)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, 2, 1), nn.GELU(),  # (B, w, S/2, S/2)
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.GELU(),  # (B, 2w, S/4, S/4)
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.GELU(),  # (B, 2w, S/8, S/8)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 1))

    def forward(self, x):  # (B, 1, S, S) -> (B,) logits
        return self.net(x).squeeze(1)


def split_patients(patients, *, generator: torch.Generator, train_fraction: float = 0.5):
    """Shuffle the unique patient ids with `generator` and split them: (train ids, held-out ids), both non-empty."""
    ids = np.unique(np.asarray(patients))
    if len(ids) < 2:
        raise ValueError(f"a patient split needs at least 2 patients, got {len(ids)}")
    perm = torch.randperm(len(ids), generator=generator).numpy()
    k = min(max(1, int(round(train_fraction * len(ids)))), len(ids) - 1)
    return ids[perm[:k]], ids[perm[k:]]


def classifier_two_sample(real, generated, real_patients, generated_patients, *, generator: torch.Generator,
                          train_fraction: float = 0.5, steps: int = 300, batch_size: int = 32, lr: float = 2e-3,
                          width: int = 16) -> dict:
    """Classifier two-sample test: train a small CNN to tell real from generated slices on some test patients,
    report its accuracy on the others (split by patient, so it cannot learn a patient's anatomy). 0.5 means the
    classifier cannot tell them apart; 1.0 means every held-out slice is recognised.

    Args:
        real, generated: (N, S, S) and (M, S, S) slices in [-1, 1].
        real_patients, generated_patients: (N,), (M,) patient id of each slice (a generated slice belongs to the
            patient whose mask it came from).
        generator: torch Generator for the split, the initial weights and the batches.
        train_fraction: share of patients used for training.
        steps, batch_size, lr, width: training of the CNN (AdamW).
    Returns:
        dict accuracy (held-out, balanced: mean of the real and the generated accuracy), n_heldout,
        train_patients, heldout_patients.
    """
    x = torch.as_tensor(np.concatenate([np.asarray(real), np.asarray(generated)]), dtype=torch.float32)[:, None]
    y = torch.cat([torch.ones(len(real)), torch.zeros(len(generated))])
    pat = np.concatenate([np.asarray(real_patients), np.asarray(generated_patients)])
    if len(pat) != len(x):
        raise ValueError(f"{len(pat)} patient ids for {len(x)} slices")
    train_ids, held_ids = split_patients(pat, generator=generator, train_fraction=train_fraction)
    tr, te = np.isin(pat, train_ids), np.isin(pat, held_ids)
    with torch.random.fork_rng(devices=[]):  # the module's init draws from the global RNG: seed it from ours
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        model = _SmallCNN(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    xt, yt = x[torch.from_numpy(tr)], y[torch.from_numpy(tr)]
    for _ in range(steps):
        idx = torch.randint(len(xt), (min(batch_size, len(xt)),), generator=generator)
        loss = nn.functional.binary_cross_entropy_with_logits(model(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (model(x[torch.from_numpy(te)]) > 0).float()
    ye = y[torch.from_numpy(te)]
    accs = [float((pred[ye == k] == k).float().mean()) for k in (1.0, 0.0) if (ye == k).any()]
    return {"accuracy": float(np.mean(accs)), "n_heldout": int(te.sum()), "train_patients": train_ids.tolist(),
            "heldout_patients": held_ids.tolist()}


# ---------------------------------------------------------------------------------------------------------------
# positive controls: known flaws the classifier two-sample test must detect before its "cannot tell" counts

CONTROL_OFFSET_HU = 40.0  # a lung W1 of 40 HU passes HU_W1_MAX (50): only the classifier can catch this flaw
CONTROL_BLUR_PX = 1.0  # Gaussian sigma: removes the CT noise and fine texture a too-smooth generator loses
CONTROLS = (f"lung +{CONTROL_OFFSET_HU:g} HU", f"Gaussian blur {CONTROL_BLUR_PX:g} px")


def perturb(real, labels, control: str) -> np.ndarray:
    """A known perturbation of real slices (a positive control of `CONTROLS`).

    - "lung +40 HU": every pixel inside the lung (lung and the in-lung lesion classes) raised by CONTROL_OFFSET_HU;
    - "Gaussian blur 1 px": each slice blurred with sigma CONTROL_BLUR_PX pixels (nothing else changes).

    Args:
        real: (N, S, S) slices in [-1, 1]. labels: (N, S, S) their masks. control: one of `CONTROLS`.
    Returns:
        (N, S, S) float32 in [-1, 1].
    """
    from scipy import ndimage

    x = np.asarray(real, dtype=np.float64)
    if control == CONTROLS[0]:
        inside = np.isin(np.asarray(labels).reshape(x.shape), L.LUNG_IDS)
        step = CONTROL_OFFSET_HU * 2.0 / (L.MODEL_WINDOW[1] - L.MODEL_WINDOW[0])  # HU -> window units
        out = x + step * inside
    elif control == CONTROLS[1]:
        out = ndimage.gaussian_filter(x, sigma=(0,) * (x.ndim - 2) + (CONTROL_BLUR_PX,) * 2, mode="nearest")
    else:
        raise ValueError(f"unknown positive control {control!r}; expected one of {CONTROLS}")
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def positive_controls(real, labels, patients, *, generator: torch.Generator, controls=CONTROLS,
                      **classifier) -> dict[str, float]:
    """The classifier two-sample test on real slices against perturbed copies of the same slices (`perturb`): a
    valid instrument tells them apart (accuracy above `instruments.CONTROL_ACCURACY_MIN`).

    Args:
        real: (N, S, S) real slices in [-1, 1]. labels: (N, S, S) masks. patients: (N,) patient ids.
        generator: CPU torch.Generator, drawn from once per control in order (split, weights, batches).
        controls: names from `CONTROLS`. classifier: `classifier_two_sample` settings (steps, width, ...).
    Returns:
        control name -> held-out balanced accuracy.
    """
    return {c: classifier_two_sample(real, perturb(real, labels, c), patients, patients, generator=generator,
                                     **classifier)["accuracy"] for c in controls}


# ---------------------------------------------------------------------------------------------------------------
# memorisation

def nearest_distances(queries, references, chunk: int = 256) -> np.ndarray:
    """L2 distance of each query slice to its nearest reference slice (flattened, torch.cdist in chunks)."""
    q = torch.as_tensor(np.asarray(queries), dtype=torch.float64).flatten(1)
    r = torch.as_tensor(np.asarray(references), dtype=torch.float64).flatten(1)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query slices {tuple(q.shape)} and reference slices {tuple(r.shape)} differ in size")
    # exact distances (no matrix-product shortcut), so an exact copy is at distance 0
    mode = "donot_use_mm_for_euclid_dist"
    return torch.cat([torch.cdist(q[i:i + chunk], r, compute_mode=mode).min(1).values
                      for i in range(0, len(q), chunk)]).numpy()


def memorisation(generated, train, test, percentile: float = 5.0) -> dict:
    """Does the generator copy training slices? Compare generated-to-train nearest-neighbour distances with
    test-to-train ones (test slices are real slices the model never saw: their distances are what "new" looks like).

    Args:
        generated, train, test: (N, S, S) slices in the same units.
        percentile: a generated slice closer to the training set than this percentile of the test-to-train
            distances is flagged.
    Returns:
        dict ratio (median generated NN distance / median test NN distance; well below 1 suggests copying),
        share_flagged, threshold, flagged (bool per generated slice), generated_nn, test_nn.
    """
    gen_nn, test_nn = nearest_distances(generated, train), nearest_distances(test, train)
    thr = float(np.percentile(test_nn, percentile))
    flagged = gen_nn < thr
    med = float(np.median(test_nn))
    return {"ratio": float(np.median(gen_nn)) / med if med > 0 else math.nan,
            "share_flagged": float(flagged.mean()), "threshold": thr, "flagged": flagged,
            "generated_nn": gen_nn, "test_nn": test_nn}


def false_positive_sources(pred, labels, classes: Sequence[str | int]) -> pd.DataFrame:
    """Where a segmenter's false positives lie: for each class, its predicted pixels outside that class in the mask,
    counted by the class the mask gives them.

    Read for the judge on real and on generated slices of the same masks: a generated texture the judge mistakes
    for a lesion shows up as extra false positives on the class whose texture is wrong (e.g. GGO called on
    generated fibrosis), which no HU histogram shows.

    Args:
        pred, labels: (N, S, S) label maps of project ids (the segmenter's prediction, the mask).
        classes: the predicted classes to count (names or ids).
    Returns:
        long rows: class (the predicted class), true_class (the mask's class), pixels, share (of that class's
        false-positive pixels), most pixels first within a class; classes without a false positive have no rows.
    """
    pred, lab = np.asarray(pred), np.asarray(labels)
    if pred.shape != lab.shape:
        raise ValueError(f"pred {pred.shape} and labels {lab.shape} must have the same shape")
    rows = []
    for c in classes:
        cid = L.class_id(c)
        fp = (pred == cid) & (lab != cid)
        total = int(fp.sum())
        true, counts = np.unique(lab[fp], return_counts=True)
        rows += [{"class": L.BY_ID[cid].name, "true_class": L.BY_ID[int(t)].name, "pixels": int(n),
                  "share": n / total} for t, n in sorted(zip(true, counts), key=lambda tn: -tn[1])]
    return pd.DataFrame(rows, columns=["class", "true_class", "pixels", "share"])


def judge_errors(seg, real, generated, labels, classes: Sequence[str | int]) -> pd.DataFrame:
    """`false_positive_sources` of a segmenter on real slices and on generated slices of the same masks.

    Args:
        seg: anything with `predict((N, S, S) images) -> (N, S, S) label maps` (the judge).
        real, generated: (N, S, S) images in the model window. labels: (N, S, S) their shared masks.
        classes: the predicted classes to count.
    Returns:
        pixels indexed by (class, true_class), columns "real" and "generated" (0 where one has none).
    """
    count = lambda images: false_positive_sources(seg.predict(images), labels, classes).set_index(
        ["class", "true_class"])["pixels"]
    return pd.DataFrame({"real": count(real), "generated": count(generated)}).fillna(0).astype(int)


def texture_ratio(generated_hu, real_hu, labels, classes: Sequence[str | int]) -> pd.DataFrame:
    """`texture` of generated and real slices of the same masks, per class present in both, and generated / real
    (below 1: the class is rendered too smooth). Columns real, generated, ratio; index class."""
    t = pd.DataFrame({"real": texture(real_hu, labels, classes), "generated": texture(generated_hu, labels, classes)})
    t = t.dropna()
    return t.assign(ratio=t["generated"] / t["real"]).rename_axis("class")


def region_rows(scored, model: str) -> pd.DataFrame:
    """Region PSNR/SSIM (full frame, body, lung) of every sampling seed's images of `model` in a `scoring.Scored`.

    Returns long rows: model, seed, slice, patient, region, metric ("psnr"/"ssim"), value.
    """
    parts = []
    for (m, _, cond, seed), gen in scored.images.items():
        if m != model or cond != "full":
            continue
        q = region_quality(gen, scored.real, scored.labels).melt(id_vars=["image", "region"], var_name="metric")
        pos = q.pop("image").to_numpy()
        parts.append(q.assign(model=model, seed=seed, slice=scored.index[pos], patient=scored.patient[pos]))
    if not parts:
        raise KeyError(f"no full-mask images of model {model!r} in the scored set")
    return pd.concat(parts, ignore_index=True)[["model", "seed", "slice", "patient", "region", "metric", "value"]]


def hu_w1_rows(scored, classes: Sequence[str | int] | None = None) -> pd.DataFrame:
    """Per-class HU Wasserstein-1 (`hu_wasserstein`) of every full-mask image set in a `scoring.Scored`, as long rows.

    One row per (model, train_seed, sampling seed, class present in the scored masks): metric "hu_w1", slice -1,
    patient "all", value in HU (the pixels of all scored slices pooled).

    Args:
        scored: `scoring.Scored`. classes: names or ids (default: every class in the masks but background).
    """
    from difflung.diffusion.sample import to_hu

    if classes is None:
        classes = [int(c) for c in np.unique(scored.labels) if c != L.BACKGROUND]
    real_hu, rows = to_hu(scored.real), []
    for (model, train_seed, cond, seed), gen in scored.images.items():
        if cond != "full":
            continue
        for c, v in hu_wasserstein(to_hu(gen), real_hu, scored.labels, classes).items():
            rows.append({"model": model, "train_seed": train_seed, "condition": cond, "seed": seed, "slice": -1,
                         "patient": "all", "metric": "hu_w1", "class": c, "value": v})
    return pd.DataFrame(rows, columns=["model", "train_seed", "condition", "seed", "slice", "patient", "metric",
                                       "class", "value"])


def region_metric_rows(scored, regions: Sequence[str] = ("body", "lung")) -> pd.DataFrame:
    """Region PSNR/SSIM of every full-mask image set of a `scoring.Scored` (each model and training seed), as rows
    in `scoring.SCHEMA` with metrics named "<psnr|ssim>_<region>" (psnr_body, ssim_lung, ...), class "all".

    The full-frame scores stay the rows "psnr"/"ssim" that `generate_and_score` writes; these sit beside them.
    """
    parts = []
    for (model, train_seed, cond, seed), gen in scored.images.items():
        if cond != "full":
            continue
        q = region_quality(gen, scored.real, scored.labels)
        q = q[q["region"].isin(regions)].melt(id_vars=["image", "region"], var_name="metric")
        pos = q.pop("image").to_numpy()
        q["metric"] = q["metric"] + "_" + q.pop("region")
        parts.append(q.assign(model=model, train_seed=train_seed, condition=cond, seed=seed, slice=scored.index[pos],
                              patient=scored.patient[pos], **{"class": "all"}))
    cols = ["model", "train_seed", "condition", "seed", "slice", "patient", "metric", "class", "value"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)
