"""How wide the band of `likelihood.within_band` should be, chosen on training images.

    python benchmarks/band_study.py [--model mnist-ve-is-edm] [--bands 0 2 3 4 6]
                                    [--images 1000] [--tolerance 2e-3] [--threads 1] [--out PATH]

For each band k in --bands (0: the model as it is), the bits/dim from the model's own cut-off of
the first --images MNIST *training* images (the test set plays no part in the choice), each
dequantised with one Gaussian Hutchinson probe, both drawn from seed 0 (the same images, noise and
probes for every band, so differences are paired), torchdiffeq dopri5 at rtol = atol =
--tolerance. Per band: every image's bits/dim, the mean ± standard error, the median and the share
of images above 5 bits/dim (those the flow fails on). Writes sdelib/results/band_study_<model>.json
after each band (machine, command, date); run again with the same arguments, it skips the bands
already there.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from sdelib.data import load_mnist
from sdelib.device import default_device
from sdelib.likelihood import dataset_bpd, dequantize, make_probe, within_band
from sdelib.pretrained import load_pretrained
from sdelib.provenance import RESULTS_DIR, provenance, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cutoff_study import HIGH, describe, summary  # noqa: E402  (benchmarks/ is a folder of scripts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mnist-ve-is-edm")
    parser.add_argument("--bands", type=float, nargs="+", default=[0, 2, 3, 4, 6])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--tolerance", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON written (default: sdelib/results/band_study_<model>.json)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS_DIR / f"band_study_{args.model}.json"
    if any(band < 0 for band in args.bands):
        parser.error("a band is a number of noise stds >= 0 (0: no band)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    model, sde = load_pretrained(args.model, map_location=device)
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    x = dequantize(load_mnist("train")[0][:args.images], generator)
    probe = make_probe(x, "gaussian", generator)
    report = {**provenance(device, "python benchmarks/band_study.py", argv),
              "model": args.model, "seed": 0, "tolerance": args.tolerance, "high": HIGH,
              "eps": model.trained_eps, "images": f"the first {args.images} MNIST training images",
              "bands": []}
    if args.out.exists():
        earlier = json.loads(args.out.read_text())
        if [earlier.get(k) for k in ("model", "tolerance", "images", "eps")] == \
                [report[k] for k in ("model", "tolerance", "images", "eps")]:
            report["bands"] = earlier["bands"]
    done = {entry["band"] for entry in report["bands"]}
    for band in args.bands:
        if band in done:
            continue
        score_fn = within_band(model, sde, band=band) if band else model
        result = dataset_bpd(score_fn, sde, x, probe, batch_size=args.batch, device=device,
                             solver="torchdiffeq", eps=model.trained_eps, rtol=args.tolerance,
                             atol=args.tolerance, desc=f"band {band:g}" if band else "no band")
        entry = {"band": band, **summary(result.bpd)}
        report["bands"] = sorted(report["bands"] + [entry], key=lambda e: e["band"])
        write_result(report, args.out)
        print(f"band {band:g}: {describe(entry)}", flush=True)


if __name__ == "__main__":
    main()
