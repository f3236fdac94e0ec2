"""Write each device's own data file (npz: x_train, y_train, x_test, y_test, raw values).

    python deploy/make_node_data.py --out DIR [--nodes 3] [--dataset digits] [--partition iid]

For the demo only: real devices bring their own files. The files hold the client part of the
dataset's seeded split, so they never overlap the server's public pool or test split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fedge.core.config import RunConfig
from fedge.core.partition import build_federation, client_data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = RunConfig(
        dataset=args.dataset, clients=args.nodes, partition=args.partition, seed=args.seed
    )
    fed = build_federation(cfg)
    prep = fed.dataset.preprocessing
    args.out.mkdir(parents=True, exist_ok=True)
    for pid in range(args.nodes):
        data = client_data(fed, pid, cfg)
        np.savez(  # raw values: a device holds measurements, not model inputs
            args.out / f"node-{pid}.npz",
            x_train=prep.invert(data.train.x),
            y_train=data.train.y,
            x_test=prep.invert(data.test.x),
            y_test=data.test.y,
        )
    print(f"wrote {args.nodes} data files to {args.out}")


if __name__ == "__main__":
    main()
