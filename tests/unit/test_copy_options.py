"""`CopyOptions` and its one encoding as fleet task kwargs (what queued messages carry)."""

import json

import pytest

from migrator.copy import CopyOptions
from migrator.fleet import job_kwargs
from migrator.reference import parse
from migrator.rules import Job

EVERYTHING = CopyOptions(platforms=frozenset({"linux/arm64", "linux/amd64"}), referrers=False,
                         immutable_tags=r"v\d+", force=True)


def job(**fields) -> Job:
    return Job(parse("a.io/ns/app:1"), parse("b.io/ns/app:1"), "images.json: 'a.io/ns/app'",
               **fields)


@pytest.mark.parametrize("options", [CopyOptions(), EVERYTHING,
                                     CopyOptions(platforms=frozenset({"*/amd64"}))])
def test_round_trip_through_json(options):
    kwargs = json.loads(json.dumps(options.to_task_kwargs()))
    assert CopyOptions.from_task_kwargs(kwargs) == options


def test_encoding_keeps_the_keys_and_types_of_queued_messages():
    assert CopyOptions().to_task_kwargs() == {}
    assert EVERYTHING.to_task_kwargs() == {"platforms": ["linux/amd64", "linux/arm64"],
                                           "referrers": False, "immutable_tags": r"v\d+",
                                           "force": True}


@pytest.mark.parametrize("kwargs, expected", [
    ({}, CopyOptions()),  # a scheduled run's tasks
    ({"platforms": [], "referrers": True}, CopyOptions()),  # `migrator enqueue` with no flags
    ({"platforms": None, "immutable_tags": None, "force": False}, CopyOptions()),
    ({"platforms": ["linux/arm64", "linux/amd64"], "referrers": False,
      "immutable_tags": r"v\d+", "force": True}, EVERYTHING),
])
def test_messages_already_queued_decode(kwargs, expected):
    assert CopyOptions.from_task_kwargs(kwargs) == expected


def test_an_unknown_option_is_refused_not_ignored():
    with pytest.raises(TypeError, match="dry_run"):
        CopyOptions.from_task_kwargs({"dry_run": True})


def test_a_dry_run_is_not_sent_to_the_fleet():
    with pytest.raises(ValueError, match="dry run"):
        CopyOptions(dry_run=True).to_task_kwargs()


def test_the_jobs_own_platforms_and_immutable_tags_win_over_the_runs():
    own = job(platforms=frozenset({"linux/s390x"}), immutable_tags="1")
    assert EVERYTHING.for_job(own).platforms == {"linux/s390x"}
    assert EVERYTHING.for_job(own).immutable_tags == "1"
    assert EVERYTHING.for_job(job()) == EVERYTHING
    kwargs = job_kwargs(own, 3, EVERYTHING)
    assert kwargs == {"rule": own.rule, "retries": 3, "platforms": ["linux/s390x"],
                      "referrers": False, "immutable_tags": "1", "force": True}
    # the run's options as the task kwargs that carried them give the same
    assert job_kwargs(own, 3, EVERYTHING.to_task_kwargs()) == kwargs
    assert job_kwargs(job(), 0, None) == {"rule": job().rule, "retries": 0}
