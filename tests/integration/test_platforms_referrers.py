"""Platform filters and referrers (signatures, SBOMs) against real registries."""

from __future__ import annotations

import json

from migrator.cli import EXIT_OK, main
from tests.integration.test_sync import WRITES, insecure, layers
from tests.support.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    get_manifest,
    list_tags,
    manifest_exists,
    push_blob,
    push_image,
    push_index,
    push_manifest,
    session_for,
    sha256_digest,
)

EMPTY_CONFIG = b"{}"
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"


def run(capsys, tmp_path, rules: dict, registries, *flags: str) -> tuple[int, str, str]:
    (tmp_path / "images.json").write_text(json.dumps(rules))
    (tmp_path / "auth.json").write_text(json.dumps(insecure(*registries)))
    code = main(["sync", "--images", str(tmp_path / "images.json"), "--auth",
                 str(tmp_path / "auth.json"), "--state", str(tmp_path / "state"), "-r", "0",
                 *flags], {})
    out, err = capsys.readouterr()
    return code, out, err


def test_platform_filter_writes_an_index_of_the_wanted_platforms(tmp_path, capsys,
                                                                  source_registry,
                                                                  target_registry):
    index = push_index(source_registry, "ns/multi", "1", media="oci", platforms=[
        ("linux", "amd64", layers(300)), ("linux", "arm64", layers(301)),
        ("linux", "arm/v7", layers(302))])
    rules = {f"{source_registry.host}/ns/multi:1": f"{target_registry.host}/t/arm"}
    code, out, err = run(capsys, tmp_path, rules, (source_registry, target_registry),
                         "--platform", "linux/arm64,linux/arm/v7")
    assert code == EXIT_OK, err
    raw, media_type, digest = get_manifest(target_registry, "t/arm", "1")
    assert media_type == OCI_INDEX and digest != index.digest
    kept = {(m["platform"]["architecture"], m["platform"].get("variant"))
            for m in json.loads(raw)["manifests"]}
    assert kept == {("arm64", None), ("arm", "v7")}
    amd64 = next(child for child in index.children if child.platform == ("linux", "amd64"))
    assert not manifest_exists(target_registry, "t/arm", amd64.digest)
    assert f"differs from the source's {index.digest}" in err

    mark = target_registry.mark()
    code, _, err = run(capsys, tmp_path, rules, (source_registry, target_registry),
                       "--platform", "linux/arm64,linux/arm/v7")
    assert code == EXIT_OK, err
    assert [r for r in target_registry.requests(mark) if r[0] in WRITES] == []

    code, _, err = run(capsys, tmp_path, rules, (source_registry, target_registry),
                       "--platform", "linux/s390x")
    assert code == 1 and "linux/s390x" in err and "linux/amd64" in err


def push_artifact(registry, repository: str, subject, artifact_type: str, payload: bytes,
                  tag: str | None = None) -> tuple[str, bytes]:
    """An OCI artifact manifest (empty config, one layer) pointing at `subject`."""
    session = session_for(registry)
    layer = push_blob(session, registry.url, repository, payload)
    config = push_blob(session, registry.url, repository, EMPTY_CONFIG)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_CONFIG_TYPE, "digest": config, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": layer,
                    "size": len(payload)}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest,
                    "size": len(subject.manifest)},
    }).encode()
    digest = push_manifest(session, registry.url, repository, tag or sha256_digest(body), body,
                           OCI_MANIFEST)
    return digest, body


def test_signatures_and_sboms_travel_with_their_image(tmp_path, capsys, source_registry,
                                                      target_registry):
    image = push_image(source_registry, "ns/signed", "1.0", layers=layers(310), media="oci")
    prefix = image.digest.replace(":", "-")
    # cosign's convention: a tag named after the digest
    signature, _ = push_artifact(source_registry, "ns/signed", image,
                                 "application/vnd.dev.cosign.artifact.sig.v1+json",
                                 b"signature bytes", tag=f"{prefix}.sig")
    # OCI 1.1 without the referrers API: the SBOM by digest, listed in the tag-schema index
    sbom, sbom_body = push_artifact(source_registry, "ns/signed", image,
                                    "application/spdx+json", b'{"spdxVersion": "SPDX-2.3"}')
    referrers_index = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sbom, "size": len(sbom_body),
                       "artifactType": "application/spdx+json"}]}).encode()
    push_manifest(session_for(source_registry), source_registry.url, "ns/signed", prefix,
                  referrers_index, OCI_INDEX)
    push_image(source_registry, "ns/signed", "other", layers=layers(311))  # not a referrer

    rules = {f"{source_registry.host}/ns/signed:1.0": f"{target_registry.host}/t/signed"}
    code, _, err = run(capsys, tmp_path, rules, (source_registry, target_registry))
    assert code == EXIT_OK, err
    assert sorted(list_tags(target_registry, "t/signed")) == sorted(["1.0", prefix,
                                                                    f"{prefix}.sig"])
    assert get_manifest(target_registry, "t/signed", f"{prefix}.sig")[2] == signature
    raw, _, _ = get_manifest(target_registry, "t/signed", sbom)
    assert json.loads(raw)["subject"]["digest"] == image.digest  # still points at the image
    assert get_manifest(target_registry, "t/signed", prefix)[0] == referrers_index

    bare = {f"{source_registry.host}/ns/signed:1.0": f"{target_registry.host}/t/bare"}
    code, _, err = run(capsys, tmp_path, bare, (source_registry, target_registry),
                       "--no-referrers")
    assert code == EXIT_OK, err
    assert list_tags(target_registry, "t/bare") == ["1.0"]


def test_platforms_per_rule_in_yaml(tmp_path, capsys, source_registry, target_registry):
    index = push_index(source_registry, "ns/both", "1", media="docker", platforms=[
        ("linux", "amd64", layers(320)), ("linux", "arm64", layers(321))])
    src, dst = source_registry.host, target_registry.host
    (tmp_path / "images.yaml").write_text(
        f"{src}/ns/both:1:\n  target: {dst}/t/arm-only\n  platforms: [linux/arm64]\n"
        f"{src}/ns/both:\n  target: {dst}/t/all\n")
    (tmp_path / "auth.json").write_text(json.dumps(insecure(source_registry, target_registry)))
    code = main(["sync", "--images", str(tmp_path / "images.yaml"), "--auth",
                 str(tmp_path / "auth.json"), "--no-state", "-r", "0"], {})
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    arm_only = json.loads(get_manifest(target_registry, "t/arm-only", "1")[0])
    assert [m["platform"]["architecture"] for m in arm_only["manifests"]] == ["arm64"]
    assert get_manifest(target_registry, "t/all", "1")[2] == index.digest  # untouched


def test_referrers_from_the_api_are_copied_and_indexed_where_the_target_lacks_it(
        tmp_path, capsys, source_registry, target_registry):
    from tests.support.front import Front

    image = push_image(source_registry, "ns/api", "1", layers=layers(330), media="oci")
    sbom, sbom_body = push_artifact(source_registry, "ns/api", image, "application/spdx+json",
                                    b'{"spdxVersion": "SPDX-2.3"}')
    descriptor = {"mediaType": OCI_MANIFEST, "digest": sbom, "size": len(sbom_body),
                  "artifactType": "application/spdx+json"}

    def referrers_api(method: str, path: str):
        if method == "GET" and path == f"/v2/ns/api/referrers/{image.digest}":
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                               "manifests": [descriptor]}).encode()
            return 200, {"Content-Type": OCI_INDEX}, body
        return None  # everything else: the real registry

    front = Front(source_registry.url, referrers_api)
    try:
        rules = {f"{front.host}/ns/api:1": f"{target_registry.host}/t/api"}
        (tmp_path / "images.json").write_text(json.dumps(rules))
        (tmp_path / "auth.json").write_text(json.dumps(
            {front.host: {"insecure": True}, **insecure(target_registry)}))
        code = main(["sync", "--images", str(tmp_path / "images.json"), "--auth",
                     str(tmp_path / "auth.json"), "--no-state", "-r", "0"], {})
        out, err = capsys.readouterr()
    finally:
        front.close()
    assert code == EXIT_OK, err
    assert get_manifest(target_registry, "t/api", sbom)[0] == sbom_body
    # The target (Distribution 2.8) has no referrers API: the SBOM is listed in its tag schema
    index = json.loads(get_manifest(target_registry, "t/api",
                                    image.digest.replace(":", "-"))[0])
    assert index["manifests"] == [descriptor]
