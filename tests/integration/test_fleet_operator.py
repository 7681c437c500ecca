"""What an operator meets around a fleet run: cancelling it, asking for a run that is not there
or a Redis that holds none, credentials that could not reach the workers, a run nobody works
on, Ctrl-C on a watcher, and a scheduled firing whose input is broken. Real Redis, real
registries, real worker and producer processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrator.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, main
from migrator.commands import fleet as fleet_commands
from tests.integration.test_fleet import REDIS_URL, ROOT, fleet, insecure  # noqa: F401
from tests.integration.test_worker_races import worker_env  # noqa: F401
from tests.support.images import list_tags, make_layer, push_image


def run_id_of(out: str) -> str:
    return out.strip().splitlines()[0]


def test_cancel_drops_the_queued_tasks_and_ends_the_run(fleet, source_registry,  # noqa: F811
                                                        target_registry, capsys):
    for tag in ("1", "2", "3"):
        push_image(source_registry, "ns/app", tag, layers=[make_layer(2048, int(tag))])
    fleet.write({f"{source_registry.host}/ns/app:1,2,3": f"{target_registry.host}/copy/app"},
                insecure(source_registry, target_registry))
    code, out, err = fleet.enqueue()  # no worker yet: every task waits in the queue
    assert code == EXIT_OK, err
    run_id = run_id_of(out)

    assert main(["cancel", run_id], fleet.env) == EXIT_OK
    out, _ = capsys.readouterr()
    assert out.startswith(f"run {run_id} cancelled (0/3 images done)")
    fleet.start_worker("w1")
    deadline = time.monotonic() + 20
    while fleet.redis.llen("migrator") and time.monotonic() < deadline:
        time.sleep(0.1)  # the worker takes the three tasks and drops them
    time.sleep(0.5)
    assert list_tags(target_registry, "copy/app") == []
    assert "cancelled: " in fleet.log("w1")

    code = main(["status", run_id], fleet.env)
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED
    assert f"run {run_id} was cancelled: 0 of 3 images done" in err
    assert out.splitlines()[-1] == (
        "Images(3) migration finished, 0 images tasks failed, 0 tasks generate failed")
    assert main(["status"], fleet.env) == EXIT_OK
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{run_id}  ") and line.endswith("  (cancelled)")


def test_status_names_the_redis_it_read(fleet, capsys):  # noqa: F811
    db = REDIS_URL.rsplit("/", 1)[1]
    assert main(["status"], fleet.env) == EXIT_OK
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == (f"no runs in Redis 127.0.0.1:6379/{db} (prefix migrator:): the "
                           "fleet's runs are in the Redis that MIGRATOR_REDIS_URL (and "
                           "MIGRATOR_REDIS_PREFIX) name")
    for command in (["status", "20260101-000000-abcdef"], ["cancel", "20260101-000000-abcdef"]):
        assert main(command, fleet.env) == EXIT_BAD_INPUT
        _, err = capsys.readouterr()
        assert err.splitlines() == [
            f"error: no run '20260101-000000-abcdef' in Redis 127.0.0.1:6379/{db} (prefix "
            "migrator:): `migrator status` lists the runs it holds"]


def test_credentials_that_cannot_reach_the_workers_are_refused(fleet, source_registry,  # noqa: F811
                                                               target_registry):
    fleet.write({f"{source_registry.host}/ns/app:1": f"{target_registry.host}/copy/app"},
                {**insecure(source_registry),
                 target_registry.host: {"username": "u", "password": "p", "insecure": True}})
    code, out, err = fleet.enqueue()
    assert (code, out) == (EXIT_BAD_INPUT, "")
    problems = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(problems) == 1
    assert f"the credentials for {target_registry.host} cannot reach the workers: set " \
           "MIGRATOR_SECRET_KEY" in problems[0]
    assert fleet.redis.dbsize() == 0  # no run, no task


def test_a_watcher_says_when_no_worker_takes_the_run(fleet, source_registry,  # noqa: F811
                                                     target_registry, monkeypatch):
    monkeypatch.setattr(fleet_commands, "NOBODY_AFTER", 0.5)
    fleet.write({f"{source_registry.host}/ns/app:1": f"{target_registry.host}/copy/app"},
                insecure(source_registry, target_registry))
    code, out, _ = fleet.enqueue("--wait", "--timeout", "4")
    assert code == EXIT_FAILED  # still queued when the watcher gave up
    assert "no worker has taken a task for 0.5 s and none answers on Redis 127.0.0.1:6379/" in out
    assert "(queue 'migrator'): start one with `celery -A workers worker`" in out


def test_ctrl_c_on_a_watcher_leaves_the_run_going(fleet, source_registry,  # noqa: F811
                                                  target_registry, tmp_path: Path):
    fleet.write({f"{source_registry.host}/ns/app:1": f"{target_registry.host}/copy/app"},
                insecure(source_registry, target_registry))
    producer = subprocess.Popen(
        [sys.executable, "-m", "migrator", "enqueue", "--images", str(tmp_path / "images.json"),
         "--auth", str(tmp_path / "auth.json"), "--wait"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **fleet.env, "PYTHONPATH": str(ROOT)})
    assert producer.stdout is not None
    run_id = producer.stdout.readline().strip()  # printed before it starts watching
    time.sleep(1)
    producer.send_signal(signal.SIGINT)
    out, err = producer.communicate(timeout=20)
    assert producer.returncode == 130, err
    assert (f"stopped watching; run {run_id} goes on in the fleet: follow it with `migrator "
            f"status {run_id} --wait`, stop it with `migrator cancel {run_id}`") in err
    assert "Traceback" not in err
    assert fleet.redis.exists(f"migrator:run:{run_id}")


def test_a_broken_scheduled_firing_is_a_failed_run(worker_env, tmp_path: Path,  # noqa: F811
                                                   capsys):
    from workers import tasks
    from workers.schedule import Schedule

    _, prefix = worker_env
    (tmp_path / "nightly.yaml").write_text("quay.io: r.example.com/a/b\n")
    schedule = Schedule(name="nightly", images=str(tmp_path / "nightly.yaml"),
                        interval=60.0).model_dump(exclude_none=True)
    run_id = tasks.start_scheduled_run(schedule)
    assert run_id
    environ = {"MIGRATOR_REDIS_URL": os.environ["MIGRATOR_REDIS_URL"],
               "MIGRATOR_REDIS_PREFIX": prefix}
    code = main(["status", run_id], environ)
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED
    (line,) = [line for line in err.splitlines() if line.startswith("generate failed: ")]
    assert line.startswith("generate failed: schedule nightly: ")
    assert "'quay.io': the source names a whole registry" in line
    assert out.splitlines()[-1] == (
        "Images(0) migration finished, 0 images tasks failed, 1 tasks generate failed")


pytestmark = pytest.mark.integration
