"""The command line of a user switching from image-syncer v1.5 or image-migrator: `migrator
check`, the combined `--config` file, v1.5's flags and their spellings, and the reports."""

from __future__ import annotations

import json

import pytest
import yaml

from migrator.cli import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    build_parser,
    compatible_argv,
    load_inputs,
    main,
    write_report,
    write_success_images,
)
from migrator.errors import ConfigError
from migrator.reference import Reference
from migrator.rules import Job

IMAGES = """\
nginx:latest: registry.example.com/test/nginx
redis:7.2.7-alpine: lchdzh/redis
grafana/grafana:11.3.2: ""
kubernetesui/dashboard: registry:5000/image-syncer-test/dashboard
k8s.gcr.io/pause:3.2: davidliyutong/pause
docker.io/consul:/^1\\./: harbor.example.com/lib/consul
quay.io/coreos/etcd:v1,v2: [x.example.com/a/etcd, y.example.com/b/etcd]
hybridnetdev/hybridnet@sha256:{digest}: x.example.com/h/hybridnet:pinned
"""
DIGEST = "a" * 64
EXPECTED = [
    "docker.io/library/nginx:latest -> registry.example.com/test/nginx",
    "docker.io/library/redis:7.2.7-alpine -> docker.io/lchdzh/redis",
    "docker.io/grafana/grafana:11.3.2 -> reg.example.com/ns/grafana",
    "docker.io/kubernetesui/dashboard -> registry:5000/image-syncer-test/dashboard",
    "k8s.gcr.io/pause:3.2 -> docker.io/davidliyutong/pause",
    "docker.io/library/consul:/^1\\./ -> harbor.example.com/lib/consul",
    "quay.io/coreos/etcd:v1,v2 -> x.example.com/a/etcd",
    "quay.io/coreos/etcd:v1,v2 -> y.example.com/b/etcd",
    f"docker.io/hybridnetdev/hybridnet@sha256:{DIGEST} -> x.example.com/h/hybridnet:pinned",
]
AUTH = """\
registry.hub.docker.com: {username: me, password: "${HUB_TOKEN}"}
nvcr.io: {username: $$oauthtoken, password: "${NGC_KEY}"}
quay.io/coreos: {}
"""
ENV = {"HUB_TOKEN": "s3cret", "NGC_KEY": "n6c"}


def run(capsys, argv, environ=ENV):
    code = main(argv, environ)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images.yaml").write_text(IMAGES.format(digest=DIGEST))
    (tmp_path / "auth.yaml").write_text(AUTH)
    return tmp_path


def test_check_prints_each_rule_normalised(capsys, files):
    code, out, err = run(capsys, ["check", "--images", "images.yaml", "--auth", "auth.yaml",
                                  "--registry", "reg.example.com", "--namespace", "ns"])
    assert (code, err) == (EXIT_OK, [])
    assert out[:len(EXPECTED)] == EXPECTED
    assert out[len(EXPECTED):] == [
        "auth docker.io: credentials",  # registry.hub.docker.com is Docker Hub
        "auth nvcr.io: credentials",
        "auth quay.io/coreos: anonymous",
        "Rules(9) valid in images.yaml, 3 auth entries",
    ]
    assert "s3cret" not in "\n".join(out)


def test_check_needs_no_network(capsys, files, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("check opened a connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    code, _, _ = run(capsys, ["check", "--images", "images.yaml", "--auth", "auth.yaml",
                              "--registry", "reg.example.com", "--namespace", "ns"])
    assert code == EXIT_OK


def test_check_refuses_with_one_line_per_problem(capsys, files):
    (files / "bad.yaml").write_text("quay.io: x.example.com/a/b\nNginx: x.example.com/a/n\n"
                                    "quay.io/a/b: [1]\n")
    code, out, err = run(capsys, ["check", "--images", "bad.yaml"])
    assert code == EXIT_BAD_INPUT and out == []
    assert err[-1] == "check failed: 3 problems"
    assert [line.split(": ")[2] for line in err[:-1]] == ["'quay.io'", "'Nginx'", "'quay.io/a/b'"]
    assert "the source names a whole registry" in err[0]


def test_src_and_dst_read_as_docker_reads_them(capsys, files):
    code, out, _ = run(capsys, ["check", "--src", "nginx:1.25", "--dst", "lchdzh/nginx"])
    assert code == EXIT_OK
    assert out[0] == "docker.io/library/nginx:1.25 -> docker.io/lchdzh/nginx"


@pytest.mark.parametrize("form", ["yaml", "json"])
def test_config_file_reads_as_the_two_files(capsys, files, form):
    config = {"auth": yaml.safe_load(AUTH), "images": yaml.safe_load(IMAGES.format(digest=DIGEST))}
    path = files / f"config.{form}"
    path.write_text(json.dumps(config) if form == "json" else yaml.safe_dump(config))
    code, out, err = run(capsys, ["check", "--config", path.name, "--registry",
                                  "reg.example.com", "--namespace", "ns"])
    assert (code, err) == (EXIT_OK, [])
    assert sorted(out[:len(EXPECTED)]) == sorted(EXPECTED)  # a re-dumped mapping is sorted
    assert out[-1] == f"Rules(9) valid in config.{form}, 3 auth entries"


def test_config_file_problems_name_the_part(capsys, files):
    (files / "config.yaml").write_text(
        "auth:\n  nvcr.io: {username: $oauthtoken, password: x}\n"
        "image:\n  nginx: x.example.com/a/b\n")
    code, _, err = run(capsys, ["check", "--config", "config.yaml"], environ={})
    assert code == EXIT_BAD_INPUT
    assert err[:-1] == [
        "error: config.yaml: unknown key 'image': did you mean 'images'?",
        "error: config.yaml: no images: the file needs an `images:` mapping of source image "
        "to target",
        "error: config.yaml: auth: 'nvcr.io': username: environment variable oauthtoken is "
        "not set (for a literal '$', write '$$': '$$oauthtoken')",
    ]


def test_config_and_split_files_together_are_refused(capsys, files):
    (files / "config.yaml").write_text("images: {nginx: x.example.com/a/b}\n")
    code, _, err = run(capsys, ["check", "--config", "config.yaml", "--images", "images.yaml"])
    assert code == EXIT_BAD_INPUT and "--config holds the auth and the images" in err[0]


def test_a_literal_dollar_in_a_user_name(capsys, files):
    from migrator.auth import load_auth

    auth = load_auth("auth.yaml", environ=ENV, required=True)
    assert auth.lookup("nvcr.io", "nvidia/cuda").username == "$oauthtoken"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--auth", "a.json", "--images", "i.json"], ["sync", "--auth", "a.json", "--images",
                                                      "i.json"]),
        (["-workers=5", "-auth=a.json"], ["sync", "--workers=5", "--auth=a.json"]),
        (["sync", "-p", "3"], ["sync", "-p", "3"]),
        (["--version"], ["--version"]),
        (["config", "-n", "default"], ["config", "-n", "default"]),
    ],
)
def test_compatible_argv(argv, expected):
    assert compatible_argv(argv) == expected


def parsed(argv):
    return build_parser().parse_args(compatible_argv(argv))


def test_v15_flags_parse(files):
    args = parsed(["--config", "c.yaml", "-p", "6", "-r", "2", "--os", "linux", "--arch",
                   "amd64", "--arch=arm64:v8", "--force", "--output-success-images", "ok.json",
                   "--output-images-format", "json"])
    assert (args.command, args.workers, args.retries, args.force) == ("sync", 6, 2, True)
    assert (args.os, args.arch) == (["linux"], ["amd64", "arm64:v8"])
    assert (args.output_success_images, args.output_images_format) == ("ok.json", "json")
    assert parsed(["sync"]).output_images_format == "yaml"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--arch", "amd64"], {"*/amd64"}),
        (["--os", "linux", "--arch", "amd64", "--arch", "arm64:v8"],
         {"linux/amd64", "linux/arm64/v8"}),
        (["--os", "linux"], {"linux/*"}),
        (["--platform", "linux/amd64,linux/arm64,windows/amd64", "--arch", "arm64:v8"],
         {"linux/arm64/v8"}),
        (["--platform", "linux/amd64", "--os", "linux"], {"linux/amd64"}),
    ],
)
def test_os_and_arch_become_a_platform_filter(files, flags, expected):
    args = parsed(["sync", "--images", "images.yaml", "--registry", "r.example.com",
                   "--namespace", "ns", *flags])
    load_inputs(args, ENV)
    assert args.platform == frozenset(expected)


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--arch", "amd 64"], "--arch 'amd 64': expected an architecture"),
        (["--os", "windows:10.0"], "os versions are not supported"),
        (["--platform", "linux/amd64", "--arch", "arm64"], "no platform is both in"),
    ],
)
def test_bad_platform_flags_are_input_errors(files, flags, problem):
    args = parsed(["sync", "--images", "images.yaml", "--registry", "r.example.com",
                   "--namespace", "ns", *flags])
    with pytest.raises(ConfigError) as info:
        load_inputs(args, ENV)
    assert problem in info.value.problems[0]


def job(source, target):
    def ref(text):
        registry, _, rest = text.partition("/")
        repository, _, tag = rest.partition(":")
        return Reference(registry, repository, tag)

    return Job(ref(source), ref(target), "images.json")


def test_reports_keep_every_target_of_a_source(tmp_path):
    jobs = {job("quay.io/a/x:1", "r.io/t/x:1"): "", job("quay.io/a/x:1", "s.io/t/x:1"): "",
            job("quay.io/a/y:2", "r.io/t/y:2"): ""}
    write_report(str(tmp_path / "ok.json"), jobs)
    assert json.loads((tmp_path / "ok.json").read_text()) == {
        "quay.io/a/x:1": ["r.io/t/x:1", "s.io/t/x:1"], "quay.io/a/y:2": "r.io/t/y:2"}


def test_success_images_as_image_syncer_writes_them(tmp_path):
    jobs = [job("quay.io/a/x:1", "r.io/t/x:1"), job("quay.io/a/x:1", "s.io/t/x:1"),
            job("quay.io/a/y:2", "r.io/t/y:2")]
    expected = {"quay.io/a/x:1": ["r.io/t/x:1", "s.io/t/x:1"], "quay.io/a/y:2": ["r.io/t/y:2"]}
    write_success_images(str(tmp_path / "ok.yaml"), "yaml", jobs)
    assert yaml.safe_load((tmp_path / "ok.yaml").read_text()) == expected
    write_success_images(str(tmp_path / "ok.json"), "json", jobs)
    assert json.loads((tmp_path / "ok.json").read_text()) == expected


@pytest.mark.parametrize("flag", ["--force", "--retries=2", "--no-referrers", "--arch=amd64"])
def test_verify_refuses_flags_that_mean_nothing_to_it(capsys, flag):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["verify", "--images", "i.json", flag])
    assert info.value.code == EXIT_BAD_INPUT
    assert f"unrecognized arguments: {flag}" in capsys.readouterr().err
