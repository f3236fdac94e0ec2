"""A bare Flower app: Flower's FedAvg over the same sampled clients and the same local training.

The baseline of `benchmarks/scale.py`'s `overhead_ratio_vs_flower`: no validation, robust rules,
checkpoints, sampling by partition or byte counting; the central test evaluation after each
round is kept, as fedge does it. Run as a script it simulates with the given settings and
writes each round's end time (seconds since round 1 began) to --json.

    python benchmarks/bare_flower.py --json OUT --run-config "dataset=mnist1d clients=1000 ..."
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedge.core import training
from fedge.core.config import SETTINGS, RunConfig
from fedge.core.models import build_teacher
from fedge.core.partition import build_federation, client_data
from fedge.core.records import record_to_config, record_to_weights, weights_to_record
from fedge.core.settings import parse_pairs

client = ClientApp()
server = ServerApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    """The same local training as fedge (data, model, epochs, seed), and nothing else."""
    import torch

    torch.set_num_threads(1)
    cfg = record_to_config(msg.content.config_records["config"])
    pid = int(context.node_config["partition-id"])
    fed = build_federation(cfg)
    data = client_data(fed, pid, cfg)
    prep = fed.dataset.preprocessing
    model = build_teacher(prep.input_shape, fed.dataset.num_classes, cfg.seed, cfg.teacher)
    training.set_weights(model, record_to_weights(msg.content.array_records["arrays"]))
    server_round = int(msg.content.config_records["config"]["server-round"])
    result = training.train(
        model,
        data.train.x,
        data.train.y,
        epochs=cfg.local_epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=training.client_seed(cfg.seed, server_round, pid),
    )
    content = RecordDict(
        {
            "arrays": weights_to_record(training.get_weights(model)),
            "metrics": MetricRecord({"num-examples": result.num_examples}),
        }
    )
    return Message(content, reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    """FedAvg with Flower's own sampling; the end time of every round to the JSON file."""
    run_config = dict(context.run_config)
    out = Path(str(run_config.pop("bench-json")))
    cfg = RunConfig.from_run_config(run_config)
    fed = build_federation(cfg)
    prep = fed.dataset.preprocessing
    model = build_teacher(prep.input_shape, fed.dataset.num_classes, cfg.seed, cfg.teacher)
    while len(list(grid.get_node_ids())) < cfg.clients:
        time.sleep(0.2)
    ends: list[float] = []
    start = time.monotonic()

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        training.set_weights(model, record_to_weights(arrays))
        _, accuracy = training.evaluate(model, fed.server.test.x, fed.server.test.y)
        if server_round:
            ends.append(time.monotonic() - start)
        return MetricRecord({"accuracy": accuracy})

    strategy = FedAvg(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=1,
        min_evaluate_nodes=0,
        min_available_nodes=cfg.clients,
    )
    values = {k: v for k, v in cfg.to_run_config().items() if k != "out"}
    result = strategy.start(
        grid,
        weights_to_record(training.get_weights(model)),
        num_rounds=cfg.rounds,
        train_config=ConfigRecord(values),
        evaluate_fn=central,
    )
    accuracy = [float(m["accuracy"]) for _, m in sorted(result.evaluate_metrics_serverapp.items())]
    out.write_text(json.dumps({"round_end_s": ends, "accuracy": accuracy}))


def simulate(cfg: RunConfig, out: Path) -> dict[str, list[float]]:
    """Run the bare app in Flower's simulation engine, exactly as fedge simulate runs its own."""
    from fedge.simulations.runner import run_engine

    run_engine(client, server, cfg, {**cfg.to_run_config(), "bench-json": str(out)}, verbose=False)
    return json.loads(out.read_text())


def cli() -> None:
    """The script's entry: settings as --run-config pairs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--run-config", default="")
    args = parser.parse_args()
    print(
        simulate(
            RunConfig.from_run_config(parse_pairs(args.run_config, SETTINGS)), args.json.resolve()
        )
    )


if __name__ == "__main__":
    import bare_flower  # the apps from an importable module, not __main__ (Ray pickles them)

    bare_flower.cli()
