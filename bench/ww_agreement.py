"""Do alphaspec's numbers equal WeightWatcher's? gof alpha, xmin and D, matrix by matrix.

    python bench/ww_agreement.py [SOURCE] [--ww-python PYTHON]     (default SOURCE: example:minilm)

WeightWatcher 0.7.7 runs in its own environment (--ww-python) on the same checkpoint directory;
without CUDA it takes its float64 scipy SVD path, with its default PL fit (xmin by minimal KS D
over every candidate, as alphaspec's gof).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

import pandas as pd

from alphaspec import analyze_checkpoint
from alphaspec.sources.checkpoint import resolve

WW = """
import sys, json, logging, warnings
warnings.filterwarnings("ignore"); logging.disable(logging.CRITICAL)
import weightwatcher as ww
d = ww.WeightWatcher(model=sys.argv[1]).analyze()
d[["name", "alpha", "xmin", "D"]].to_csv(sys.argv[2], index=False)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", default="example:minilm")
    ap.add_argument("--ww-python", default=sys.executable)
    args = ap.parse_args()
    folder = resolve(args.source)
    ours = analyze_checkpoint(folder, estimator="gof", device="cpu").table
    ours["key"] = ours["name"].str.removesuffix(".weight")
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        subprocess.run([args.ww_python, "-c", WW, str(folder), f.name], check=True, capture_output=True)
        theirs = pd.read_csv(f.name)
    both = theirs.merge(ours, left_on="name", right_on="key", suffixes=("_ww", ""))
    rel = {col: float(((both[f"{col}_ww" if col != "D" else "D"] - both[mine]).abs() / both[mine].abs()).max())
           for col, mine in (("alpha", "alpha"), ("xmin", "xmin"), ("D", "ks_d"))}
    only_ours = sorted(set(ours["key"]) - set(theirs["name"]))
    print(json.dumps({"source": args.source, "matched": len(both), "weightwatcher_rows": len(theirs),
                      "alphaspec_rows": len(ours), "max_relative_difference": rel,
                      "analysed_by_alphaspec_only": only_ours}, indent=1))


if __name__ == "__main__":
    main()
