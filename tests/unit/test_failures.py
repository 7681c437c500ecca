"""Failed images as printed: one line per image, one per namespace a missing namespace stopped."""

from __future__ import annotations

from migrator.failures import failure_lines, namespace_of

MISSING = ("reg.example:5000 knows no repository 'team/app' and will not create it on push: "
           "does the namespace 'team' exist, and may this account push to it? (create 'team' "
           "on the registry first) (POST https://reg.example:5000/v2/team/app/blobs/uploads/)")
DENIED = ("reg.example:5000: user 'u' may not push to 'org/app': does the namespace 'org' "
          "exist, and may this account push to it?")


def target(job: str) -> str:
    return job.partition(" -> ")[2]


def test_a_namespace_is_named_by_what_to_create_first_then_by_the_question():
    assert namespace_of(MISSING) == "team"
    assert namespace_of(DENIED) == "org"
    assert namespace_of("refuses the repository name 'a/b': it needs more") == "a/b"
    assert namespace_of("reg: request failed (GET ...) HTTP 500") is None


def test_a_namespace_s_images_share_one_line_and_the_others_keep_theirs():
    failed = {f"src/app:{n} -> reg.example:5000/team/app:{n}": MISSING for n in range(37)}
    failed["src/app:1 -> other.example/team/app:1"] = MISSING  # another registry: its own
    failed["src/x:1 -> reg.example:5000/ns/x:1"] = "reg.example:5000: request failed"
    failed["src/y:1 -> reg.example:5000/org/y:1"] = DENIED
    lines = failure_lines(failed, target)
    assert lines == [
        "failed: 37 images into reg.example:5000/team (src/app:0 -> reg.example:5000/team/app:0, "
        f"src/app:1 -> reg.example:5000/team/app:1 and 35 more): {MISSING}",
        f"failed: src/app:1 -> other.example/team/app:1: {MISSING}",
        "failed: src/x:1 -> reg.example:5000/ns/x:1: reg.example:5000: request failed",
        f"failed: src/y:1 -> reg.example:5000/org/y:1: {DENIED}",
    ]
