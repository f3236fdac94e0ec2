"""Run a whole fedge pipeline on Flower's simulation engine (Ray backend), in this process."""

from __future__ import annotations

import logging
import os
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedge.core.bounded import UnsafeFileError, read_named
from fedge.core.config import SETTINGS, ConfigError, RunConfig
from fedge.core.settings import parse_flags, parse_pairs
from fedge.pipeline.rundir.paths import check_resumable, default_run_dir, final_dir, stored_config
from fedge.simulations.flower_import import import_flower_simulation

# Flower and Ray: no telemetry, no update checks, no runtime dependency installs.
WORKER_SETUP = "fedge.simulations.flower_import.import_flower_simulation"  # each Ray worker
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences a FutureWarning; we use no GPU
}


MAX_SCENARIO_BYTES = 1 << 20  # settings in TOML: a few kB


def load_scenario(path: Path) -> dict[str, Any]:
    """A scenario file: flat kebab-case settings in TOML (unknown keys are errors later)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"scenario file not found: {path}")
    try:  # bounded: a directory, a FIFO or a huge file is named, not read
        text = read_named(path, MAX_SCENARIO_BYTES).decode()
    except UnsafeFileError as err:
        raise ConfigError(f"scenario {path}: {err}; allowed: a TOML file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"scenario {path} is not valid TOML: {err}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"scenario {path} is not valid TOML: {err}") from err
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(
            f"scenario {path}: tables are not allowed ({', '.join(nested)}); use flat keys"
        )
    return data


def requested_settings(
    scenario: Path | None,
    run_config: str | None,
    flags: list[str],
    headline: dict[str, Any],
) -> dict[str, Any]:
    """The settings a command line asks for: scenario file, then --run-config, then flags.

    `flags` are the generic `--KEY VALUE` arguments; `headline` the command's own typed flags
    (None: not given). Unknown keys and bad values are ConfigErrors naming them.
    """
    settings: dict[str, Any] = {}
    if scenario is not None:
        settings.update(load_scenario(scenario))
    if run_config:
        if run_config.strip().endswith(".toml") and "=" not in run_config:
            settings.update(load_scenario(Path(run_config.strip())))
        else:
            settings.update(parse_pairs(run_config, SETTINGS))
    settings.update(parse_flags(flags, SETTINGS))
    settings.update({k: v for k, v in headline.items() if v is not None})
    for key in ("private-key", "out"):  # paths are the caller's, whatever the working directory
        if settings.get(key):
            settings[key] = str(Path(settings[key]).expanduser().resolve())
    return settings


def build_config(settings: dict[str, Any], *, resume: Path | None = None) -> RunConfig:
    """Defaults -> `settings`, then validation. `out` and `data-dir` become absolute paths.

    With `resume` (a run directory), the unfinished run's own config replaces the defaults,
    and the settings may only change what a resumed run may change.
    """
    base: dict[str, Any] = {}
    if resume is not None:
        final = final_dir(Path(resume).expanduser().resolve())
        if settings.get("out") and Path(settings["out"]).resolve() != final:
            raise ConfigError("--resume takes the run directory; do not also give --out")
        base.update(stored_config(final).to_run_config())
    cfg = RunConfig.from_run_config({**base, **settings})
    if cfg.data_dir and cfg.data_dir != "hub":  # the simulated nodes may run elsewhere
        cfg = cfg.replace(data_dir=str(Path(cfg.data_dir).expanduser().resolve()))
    if resume is not None:
        cfg = cfg.replace(out=str(final), resume=True)
        check_resumable(final, cfg)
        return cfg
    return cfg.replace(out=str(default_run_dir(cfg)))


def _check_student(cfg: RunConfig, input_shape: tuple[int, ...]) -> None:
    """ConfigError if the student or the teacher cannot take inputs of this shape.

    An arch: spec says why from its layers; any model is then run once on a zero input, so
    data too small for its pooling (npz of 1x1 images, 3-sample signals) is refused here, not
    by every client's first batch.
    """
    from fedge.core.archspec import check_student

    for name in (cfg.student, cfg.teacher):
        try:
            check_student(name, input_shape)
        except ValueError as err:
            raise ConfigError(f"student: {err}") from None
    students = cfg.auto_candidates if cfg.student == "auto" else (cfg.student,)
    for role, name in [("teacher", cfg.teacher), *(("student", n) for n in students)]:
        try:
            _probe(role, name, input_shape)
        except (RuntimeError, ValueError) as err:
            reason = " ".join(str(err).split())[:200]
            fix = (
                "larger samples, or teacher linear (no pooling)"
                if role == "teacher"
                else "larger samples, or a student that fits them (--student, auto-students)"
            )
            raise ConfigError(
                f"{role} {name} cannot take samples of shape {input_shape} ({reason}); "
                f"allowed: {fix}"
            ) from None


def _probe(role: str, name: str, input_shape: tuple[int, ...]) -> None:
    """Build the model and run it once on a zero sample (the caller's RNG state is kept)."""
    import warnings

    import torch

    from fedge.core.models import build_student, build_teacher

    with torch.random.fork_rng(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns of zero-element layers first
        model = (
            build_teacher(input_shape, 2, 0, name)
            if role == "teacher"
            else build_student(input_shape, 2, name, 0)
        )
        model.eval()(torch.zeros(1, *input_shape))


def preflight(cfg: RunConfig) -> None:
    """Every check that can fail before training starts (data, partitions, key, output dir)."""
    from fedge.compression.bundle import load_private_key
    from fedge.core.partition import build_federation, client_data
    from fedge.pipeline.rundir.paths import RUN_CONFIG_FILE, check_new_out, partial_dir
    from fedge.privacy.central import central_noise
    from fedge.privacy.dp_sgd import plan

    out = Path(cfg.out)
    if not cfg.resume:
        check_new_out(out)
        if (partial_dir(out) / RUN_CONFIG_FILE).exists():
            raise ConfigError(
                f"{partial_dir(out)} holds an unfinished run; continue it with "
                f"`fedge simulate --resume {out}` or delete it"
            )
    if cfg.private_key:
        try:
            load_private_key(Path(cfg.private_key))
        except ValueError as err:
            raise ConfigError(str(err)) from err
    if cfg.ray_address:
        check_ray_address(cfg.ray_address)
    fed = build_federation(cfg)
    _check_student(cfg, fed.dataset.preprocessing.input_shape)
    if cfg.dp == "central":
        central_noise(cfg)  # a dp-epsilon no noise can meet fails here, before training
        central_noise(cfg, "student")
    if cfg.dp == "local" and cfg.dp_epsilon > 0:
        for pid in range(cfg.clients):
            plan(len(client_data(fed, pid, cfg).train), cfg)


def backend_config(cfg: RunConfig, verbose: bool) -> dict[str, Any]:
    """Flower's Ray backend settings: local, or an existing cluster (ray-address).

    Each actor takes one CPU and its clients train with one torch thread: as many actors as
    cores, none oversubscribed (on 2 cores: two clients train at once). A straggler sleeps in
    its actor while the other goes on. The order in which replies arrive does not matter: the
    server aggregates them in the order it sent the messages, so the bytes are the same. On a
    cluster the actors spread over every node's CPUs.
    """
    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": verbose}
    cpus = 1
    if cfg.ray_address:
        init_args["address"] = cfg.ray_address
    return {"client_resources": {"num_cpus": cpus, "num_gpus": 0.0}, "init_args": init_args}


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """ConfigError within `timeout` seconds if nothing listens at HOST:PORT."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"ray-address must be HOST:PORT (ray start --head's), got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise ConfigError(
            f"ray-address {address} is unreachable ({err.strerror or err}); start the head "
            "with `ray start --head --port PORT` or leave ray-address empty for a local Ray"
        ) from None


def _start_ray(address: str | None, verbose: bool) -> None:
    """Start Ray (or join the cluster at `address`) before Flower's engine would.

    A worker on a node started with `ray start` inherits that command's environment, not
    ours, so the variables that mark a simulated node (and the driver's import path) travel in
    Ray's runtime_env. ray.init also replaces the SIGTERM handler with one that raises
    SystemExit (which hangs the engine); the caller's handler is put back. Flower's backend
    only calls ray.init when Ray is not yet initialised. Without `address` the Ray is a new
    local one ("local"): ray.init(address=None) would join any cluster `ray start` left
    running on this machine (or RAY_ADDRESS's), which an empty ray-address does not ask for.
    """
    import signal
    import sys
    import threading

    import ray

    from fedge.client.node import SIMULATION_ENV

    if ray.is_initialized():
        return
    path = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["PYTHONPATH"] = path
    env = {**FLOWER_ENV, SIMULATION_ENV: os.environ.get(SIMULATION_ENV, "1"), "PYTHONPATH": path}
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    ray.init(
        address=address or "local",
        runtime_env={"env_vars": env, "worker_process_setup_hook": WORKER_SETUP},
        logging_level=logging.ERROR,
        log_to_driver=verbose,
        include_dashboard=False,
    )
    if main and sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)


def run_engine(
    client_app: Any, server_app: Any, cfg: RunConfig, run_config: dict[str, Any], *, verbose: bool
) -> None:
    """Flower's simulation engine: `cfg.clients` nodes of `client_app`, Ray as configured.

    The public run_simulation() hands the ServerApp an empty run_config; the engine's own entry
    point (what `flwr run` uses) takes a Context, so we call that with `run_config`.
    """
    from flwr.app import Context, RecordDict

    import_flower_simulation()
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    _start_ray(cfg.ray_address or None, verbose)
    context = Context(
        run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    _run_simulation(
        num_supernodes=cfg.clients,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_name="ray",
        backend_config=backend_config(cfg, verbose),
        server_app_context=context,
        verbose_logging=verbose,
    )


class RunFailedError(RuntimeError):
    """The federation could not go on (too few nodes, no round with a usable reply)."""


Engine = Callable[..., None]  # (client_app, server_app, cfg, run_config, *, verbose)


def simulate(cfg: RunConfig, *, verbose: bool = False, engine: Engine | None = None) -> Path:
    """Run the ServerApp and `cfg.clients` simulated ClientApps; returns the run directory.

    `engine`: what runs the two apps (default: Flower's simulation engine on Ray).
    """
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    from fedge.client.node import SIMULATION_ENV

    # The simulated nodes (Ray workers inherit this environment) may trust the run's own key;
    # a real node never sees this variable and trusts only its configured key.
    os.environ[SIMULATION_ENV] = "1"

    from fedge.client import app as client
    from fedge.pipeline.rundir.paths import RESULTS_FILE, STOPPED_FILE, partial_dir
    from fedge.server import app as server
    from fedge.server.nodes import FederationError

    run = engine or run_engine
    try:
        run(client.app, server.app, cfg, cfg.to_run_config(), verbose=verbose)
    except FederationError as err:  # Flower's engine raises again what the ServerApp raised
        raise RunFailedError(str(err)) from None
    out = Path(cfg.out)
    stopped = partial_dir(out) / STOPPED_FILE
    if not (out / RESULTS_FILE).is_file() and stopped.is_file():
        raise ConfigError(stopped.read_text())  # the server stopped on a setting
    if not (out / RESULTS_FILE).is_file():
        raise RuntimeError(
            f"the simulation ended without writing {out / RESULTS_FILE}; see the log above"
        )
    return out
