"""A task message lost with its worker is sent again by the run's watcher.

Celery's Redis transport loses a message whose worker dies between taking it from the queue
and recording it as unacknowledged. The loss is played here by taking a message out of the
queue ourselves, then watching the run with a short stall bound.
"""

from __future__ import annotations

from pathlib import Path

import redis

from migrator.cli import EXIT_OK, main
from tests.integration.test_fleet import Fleet
from tests.support.images import get_manifest, make_layer, push_image

LOST_DB = 5


def test_a_lost_task_is_sent_again_when_the_run_stalls(tmp_path: Path, capsys, source_registry,
                                                       target_registry) -> None:
    pushed = {tag: push_image(source_registry, "ns/app", tag,
                              layers=[make_layer(8192, n)]).digest
              for n, tag in enumerate(("v1", "v2", "v3"))}
    url = f"redis://127.0.0.1:6379/{LOST_DB}"
    store = redis.Redis.from_url(url)
    store.flushdb()
    fleet = Fleet(tmp_path, capsys, redis_url=url)
    try:
        fleet.write({f"{source_registry.host}/ns/app:v1,v2,v3": f"{target_registry.host}/copy/app"},
                    {source_registry.host: {"insecure": True},
                     target_registry.host: {"insecure": True}})
        code, out, _ = fleet.enqueue()  # no worker yet: the three tasks wait in the queue
        run_id = out.strip()
        assert code == EXIT_OK and store.llen("migrator") == 3
        assert store.lpop("migrator")  # one message lost
        fleet.start_worker("w1")
        code = main(["status", run_id, "--wait", "--timeout", "60"],
                    {**fleet.env, "MIGRATOR_RESEND_AFTER": "3"})
        out = capsys.readouterr().out
    finally:
        fleet.stop_all()
        store.flushdb()
    assert code == EXIT_OK, out + fleet.log("w1")
    assert "nothing ended for 3 s: sent the 1 unfinished tasks again" in out
    assert out.splitlines()[-1] == (
        "Images(3) migration finished, 0 images tasks failed, 0 tasks generate failed")
    for tag, digest in pushed.items():
        assert get_manifest(target_registry, "copy/app", tag)[2] == digest
