#!/usr/bin/env python3
"""Opens a sweep's TensorBoard folder (`<results>/<sweep>/tb`) with
TensorBoard's own code and checks that it sees what palisweep wrote: each
trial's scalars, and the hparams plugin's experiment and sessions.

Runs in the pinned venv that `scripts/tensorboard/setup.sh` makes (and
prints the python of); the integration tests (`tests/integration/tensorboard.rs`)
run it on a real sweep's folder:

    PY=$(scripts/tensorboard/setup.sh)
    $PY scripts/tensorboard/check.py results/demo/tb --serve

Without `--serve` it loads the folder in-process (the Python event
multiplexer, the data provider and the hparams plugin's own request
handlers). With `--serve` it also starts `tensorboard` on a local port, once
with the Python loader and once with the Rust data server, and asks its HTTP
API what the dashboards show. Exits 1 on the first failed check.

The demo logs of the Rust tests (`write_demo_logs`) come with expectations:
`--expect-status aaaaaaaaaaaa=STATUS_SUCCESS`, `--expect-scalar
aaaaaaaaaaaa:train/loss:2=1.0`.
"""

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from tensorboard import context as tb_context
from tensorboard.backend.event_processing import data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import backend_context
from tensorboard.plugins.hparams import get_experiment
from tensorboard.plugins.hparams import list_session_groups
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.util import tensor_util

STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tb", help="the sweep's tb/ folder")
    p.add_argument("--serve", action="store_true", help="also query a running tensorboard")
    p.add_argument(
        "--expect-status",
        action="append",
        default=[],
        metavar="TRIAL=STATUS",
        help="a trial's session status (STATUS_SUCCESS, ...)",
    )
    p.add_argument(
        "--expect-hparam",
        action="append",
        default=[],
        metavar="TRIAL:TAG=VALUE",
        help="the metric value the HParams table shows for a trial",
    )
    p.add_argument(
        "--expect-steps",
        action="append",
        default=[],
        metavar="TRIAL:TAG=N",
        help="a scalar's points are steps 1..N, each once (a continuous curve)",
    )
    p.add_argument(
        "--expect-scalar",
        action="append",
        default=[],
        metavar="TRIAL:TAG:STEP=VALUE",
        help="the value TensorBoard shows for a scalar at a step",
    )
    return p.parse_args()


def trial_runs(tb):
    return sorted(
        d for d in os.listdir(tb) if os.path.isdir(os.path.join(tb, d)) and not d.startswith(".")
    )


def in_process(args):
    """The Python loader, the data provider and the hparams plugin's handlers."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(args.tb)
    multiplexer.Reload()
    trials = trial_runs(args.tb)
    check(trials, f"no trial runs under {args.tb}")

    # Scalars: simple_values arrive as the scalars plugin's tensors.
    scalar_tags = multiplexer.PluginRunToTagToContent("scalars")
    scalars = {}
    steps = {}
    for trial in trials:
        tags = scalar_tags.get(trial, {})
        check(tags, f"{trial}: no scalars")
        for tag in tags:
            for e in multiplexer.Tensors(trial, tag):
                value = tensor_util.make_ndarray(e.tensor_proto).item()
                scalars[(trial, tag, e.step)] = value
                steps.setdefault((trial, tag), []).append(e.step)
    print(f"python loader: {len(trials)} trial runs, {len(scalars)} scalar points")

    # The hparams plugin's summaries, parsed by the plugin's own code.
    hp = multiplexer.PluginRunToTagToContent(hp_metadata.PLUGIN_NAME)
    experiment_runs = [r for r, tags in hp.items() if hp_metadata.EXPERIMENT_TAG in tags]
    check(experiment_runs == ["."], f"experiment summary in runs {experiment_runs}, not '.'")
    experiment = hp_metadata.parse_experiment_plugin_data(hp["."][hp_metadata.EXPERIMENT_TAG])
    for trial in trials:
        tags = hp.get(trial, {})
        check(hp_metadata.SESSION_START_INFO_TAG in tags, f"{trial}: no session start")
        start = hp_metadata.parse_session_start_info_plugin_data(
            tags[hp_metadata.SESSION_START_INFO_TAG]
        )
        check(start.group_name == trial, f"{trial}: group name {start.group_name!r}")
        names = {h.name for h in experiment.hparam_infos}
        check(set(start.hparams) <= names, f"{trial}: hparams {set(start.hparams) - names} not in the experiment")
        if hp_metadata.SESSION_END_INFO_TAG in tags:
            hp_metadata.parse_session_end_info_plugin_data(tags[hp_metadata.SESSION_END_INFO_TAG])

    # What the dashboard's handlers answer.
    provider = data_provider.MultiplexerDataProvider(multiplexer, args.tb)
    context = backend_context.Context(
        base_plugin.TBContext(logdir=args.tb, multiplexer=multiplexer, data_provider=provider)
    )
    ctx = tb_context.RequestContext()
    got = get_experiment.Handler(
        ctx, context, "", api_pb2.GetExperimentRequest(include_metrics=True)
    ).run()
    check(got.hparam_infos, "the plugin lists no hyperparameters")
    check(got.metric_infos, "the plugin lists no metrics")
    request = api_pb2.ListSessionGroupsRequest(
        allowed_statuses=[api_pb2.Status.Value(s) for s in STATUSES],
        start_index=0,
        slice_size=1000,
        include_metrics=True,
    )
    groups = list_session_groups.Handler(ctx, context, "", request).run().session_groups
    sessions = {
        s.name: (s, g) for g in groups for s in g.sessions
    }
    check(sorted(sessions) == trials, f"sessions {sorted(sessions)} != trial runs {trials}")
    print(
        f"hparams plugin: {len(got.hparam_infos)} hparams "
        f"({', '.join(h.name for h in got.hparam_infos)}), {len(got.metric_infos)} metrics, "
        f"{len(groups)} session groups"
    )
    for name, (session, group) in sorted(sessions.items()):
        metrics = {m.name.tag: m.value for m in session.metric_values}
        check(metrics, f"{name}: the plugin shows no metric values")
        params = {k: json.loads(_value_json(v)) for k, v in group.hparams.items()}
        print(
            f"  {name}: {api_pb2.Status.Name(session.status)}, {params}, "
            f"{len(metrics)} metric values"
        )
    for expectation in args.expect_status:
        trial, status = expectation.split("=")
        check(trial in sessions, f"no session {trial}")
        got_status = api_pb2.Status.Name(sessions[trial][0].status)
        check(got_status == status, f"{trial}: status {got_status}, expected {status}")
    for expectation in args.expect_hparam:
        key, value = expectation.split("=")
        trial, tag = key.split(":", 1)
        check(trial in sessions, f"no session {trial}")
        shown = {m.name.tag: m.value for m in sessions[trial][0].metric_values}
        got_value = shown.get(tag)
        check(
            got_value is not None and math.isclose(got_value, float(value), rel_tol=1e-6),
            f"{trial}: HParams shows {tag} = {got_value}, expected {value}",
        )
    for expectation in args.expect_steps:
        key, n = expectation.split("=")
        trial, tag = key.split(":", 1)
        got_steps = sorted(steps.get((trial, tag), []))
        check(
            got_steps == list(range(1, int(n) + 1)),
            f"{trial} {tag}: steps {got_steps}, expected 1..{n} once each",
        )
    for expectation in args.expect_scalar:
        key, value = expectation.split("=")
        trial, tag, step = key.rsplit(":", 2)
        got_value = scalars.get((trial, tag, int(step)))
        check(
            got_value is not None and math.isclose(got_value, float(value), rel_tol=1e-6),
            f"{trial} {tag} step {step}: {got_value}, expected {value}",
        )
    return trials, {m.name.tag for m in got.metric_infos}


def _value_json(value):
    from google.protobuf import json_format

    return json_format.MessageToJson(value)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def serve(args, trials, metric_tags, load_fast):
    """A real `tensorboard` process and its HTTP API."""
    exe = shutil.which("tensorboard", path=os.path.dirname(sys.executable)) or "tensorboard"
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [exe, "--logdir", args.tb, "--host", "127.0.0.1", "--port", str(port), f"--load_fast={load_fast}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 60
        tags = {}
        while time.time() < deadline:
            try:
                tags = http(port, "/data/plugin/scalars/tags")
                if all(t in tags for t in trials):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            log.seek(0)
            fail(f"tensorboard (load_fast={load_fast}) never showed all runs: {tags}\n{log.read().decode()[-2000:]}")
        for trial in trials:
            check(tags[trial], f"{trial}: no scalar tags over HTTP")
        experiment = http(port, "/data/plugin/hparams/experiment", {"experimentName": "", "includeMetrics": True})
        names = [h["name"] for h in experiment.get("hparamInfos", [])]
        metrics = {m["name"]["tag"] for m in experiment.get("metricInfos", [])}
        check(names, f"load_fast={load_fast}: no hparams over HTTP: {experiment}")
        check(metrics == metric_tags, f"load_fast={load_fast}: metrics {metrics} != {metric_tags}")
        groups = http(
            port,
            "/data/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "allowedStatuses": STATUSES,
                "startIndex": 0,
                "sliceSize": 1000,
                "includeMetrics": True,
            },
        )
        statuses = {
            s["name"]: s.get("status", "STATUS_UNKNOWN")
            for g in groups.get("sessionGroups", [])
            for s in g["sessions"]
        }
        check(sorted(statuses) == trials, f"load_fast={load_fast}: sessions {sorted(statuses)} != {trials}")
        for expectation in args.expect_status:
            trial, status = expectation.split("=")
            check(statuses.get(trial) == status, f"load_fast={load_fast}: {trial} is {statuses.get(trial)}")
        shown = {
            s["name"]: {m["name"]["tag"]: m.get("value") for m in s.get("metricValues", [])}
            for g in groups.get("sessionGroups", [])
            for s in g["sessions"]
        }
        for expectation in args.expect_hparam:
            key, value = expectation.split("=")
            trial, tag = key.split(":", 1)
            got_value = shown.get(trial, {}).get(tag)
            check(
                got_value is not None and math.isclose(got_value, float(value), rel_tol=1e-6),
                f"load_fast={load_fast}: {trial}: HParams shows {tag} = {got_value}, expected {value}",
            )
        for expectation in args.expect_scalar:
            key, value = expectation.split("=")
            trial, tag, step = key.rsplit(":", 2)
            points = http(
                port,
                "/data/plugin/scalars/scalars?"
                + urllib.parse.urlencode({"run": trial, "tag": tag}),
            )
            at_step = [p[2] for p in points if p[1] == int(step)]
            check(
                at_step and math.isclose(at_step[-1], float(value), rel_tol=1e-6),
                f"load_fast={load_fast}: {trial} {tag} step {step} shows {at_step}, expected {value}",
            )
        print(
            f"tensorboard --load_fast={load_fast}: {len(tags)} runs with scalars, "
            f"{len(names)} hparams, {len(metrics)} metrics, sessions {statuses}"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main():
    args = parse_args()
    trials, metric_tags = in_process(args)
    if args.serve:
        serve(args, trials, metric_tags, "false")
        serve(args, trials, metric_tags, "true")
    print("OK")


if __name__ == "__main__":
    main()
