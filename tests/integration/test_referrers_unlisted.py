"""A source account that may pull an image but not list its repository's tags: the image is
copied, and the referrers that could not be looked up are a note, not a failed copy."""

from __future__ import annotations

import re

import pytest

from migrator.cli import EXIT_OK
from tests.integration.test_platforms_referrers import run
from tests.integration.test_sync import layers
from tests.support.front import Front
from tests.support.images import get_manifest, push_image


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_copied_image_is_not_failed_when_its_referrers_cannot_be_listed(
        tmp_path, capsys, source_registry, target_registry, status: int) -> None:
    image = push_image(source_registry, "ns/app", "1.0", layers=layers(330))

    def no_tag_list(method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        if re.match(r"^/v2/.+/tags/list", path):
            return status, {"Content-Type": "application/json"}, (
                b'{"errors": [{"code": "DENIED", "message": "tag listing not allowed"}]}')
        return None

    front = Front(source_registry.url, no_tag_list)
    try:
        rules = {f"{front.host}/ns/app:1.0": f"{target_registry.host}/t/app"}
        code, out, err = run(capsys, tmp_path, rules, (front, target_registry))
    finally:
        front.close()
    assert code == EXIT_OK, err
    assert get_manifest(target_registry, "t/app", "1.0")[2] == image.digest
    note = next(line for line in err.splitlines() if line.startswith("note: "))
    assert "t/app" in note and "referrers" in note and "could not be looked up" in note
    assert f"HTTP {status}" in note and "/tags/list" in note, note
