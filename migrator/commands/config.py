"""`migrator config`: image-migrator's command that writes the images a Kubernetes cluster runs
as an images file. The work is migrator.kube's (connect, scan, plan); here are the flags and
the order of the steps."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from migrator.commands.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    positive_float,
    positive_int,
)
from migrator.documents import quote
from migrator.errors import ClusterError, ConfigError
from migrator.kube import (
    PAGE_SIZE,
    REQUEST_TIMEOUT,
    check_loadable,
    check_namespaces,
    connect,
    is_yaml,
    load_existing,
    parse_namespaces,
    parse_repo,
    plan,
    plural,
    render,
    scan,
    summarize,
    write_file,
)
from migrator.rules import Rule


def add_config_parser(commands: Any) -> argparse.ArgumentParser:
    """The `config` subcommand (image-migrator's flags, plus what conflicts and merges need)."""
    parser = commands.add_parser(
        "config", help="write the images a Kubernetes cluster runs as a rules file",
        description="List the images used by workloads in a Kubernetes cluster and write them "
                    "as an images file that `migrator sync` reads unchanged.")
    parser.add_argument("-k", "--kubeconfig", metavar="PATH",
                        help="kubeconfig (default: $KUBECONFIG, else ~/.kube/config, else the "
                             "pod's service account)")
    parser.add_argument("--context", metavar="NAME",
                        help="kubeconfig context (default: its current-context)")
    parser.add_argument("-n", "--namespaces", action="append", metavar="NS1,NS2",
                        help="namespaces to read (default: all)")
    parser.add_argument("-t", "--repo", required=True, metavar="REGISTRY/NAMESPACE",
                        help="the target, e.g. registry.example.com/test")
    parser.add_argument("-o", "--output", default="images.json", metavar="FILE",
                        help="images file to write, JSON or .yaml/.yml, '-' for stdout "
                             "(default ./images.json)")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--force", action="store_true",
                          help="overwrite the output file if it exists")
    existing.add_argument("--merge", action="store_true",
                          help="keep the output file's entries and add the new images")
    parser.add_argument("--keep-namespace", action="store_true",
                        help="target <repo>/<source-namespace>-<name> instead of <repo>/<name>, "
                             "so that same-named images from different places do not collide")
    parser.add_argument("--include-old-revisions", action="store_true",
                        help="also copy images found only in past Deployment revisions")
    parser.add_argument("--chunk-size", type=positive_int, default=PAGE_SIZE, metavar="N",
                        help=f"objects per list request (default {PAGE_SIZE})")
    parser.add_argument("--request-timeout", type=positive_float, default=REQUEST_TIMEOUT,
                        metavar="SECONDS",
                        help=f"timeout of one API request (default {REQUEST_TIMEOUT:g})")
    parser.set_defaults(handler=run_config)
    return parser



def write_cluster_rules(args: argparse.Namespace, environ: Mapping[str, str], err: IO[str]) -> bool:
    """`migrator config`. True when every image found has its rule (no conflict, no empty
    result). Raises ConfigError for bad input, ClusterError when the cluster cannot be read."""
    problems: list[str] = []
    repo = namespaces = None
    try:
        repo = parse_repo(args.repo)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        namespaces = parse_namespaces(args.namespaces)
    except ConfigError as exc:
        problems.extend(exc.problems)
    output: str = args.output
    to_stdout = output == "-"
    if to_stdout and args.merge:
        problems.append("--merge needs an output file, not '-'")
    elif not to_stdout:
        if os.path.isdir(output):
            problems.append(f"-o/--output {quote(output)}: is a directory")
        elif not os.path.isdir(os.path.dirname(os.path.abspath(output))):
            problems.append(f"-o/--output {quote(output)}: the directory does not exist")
        elif os.path.exists(output) and not (args.force or args.merge):
            problems.append(f"{output} exists: pass --force to overwrite it or --merge to add "
                            "the new images to it")
    if problems:
        raise ConfigError(problems)
    assert repo is not None
    existing: dict[str, Any] = {}
    existing_rules: list[Rule] = []
    if args.merge:
        existing, existing_rules = load_existing(output, repo=repo, environ=environ)

    connection = connect(args.kubeconfig, args.context, environ)
    with connection.api_client:
        print(f"reading {connection.host} ({connection.origin})", file=err, flush=True)
        if namespaces is not None:
            check_namespaces(connection.api_client, namespaces,
                             request_timeout=args.request_timeout)
        result = scan(connection.api_client, namespaces=namespaces, page_size=args.chunk_size,
                      request_timeout=args.request_timeout)

    outcome = plan(result.images, repo, keep_namespace=args.keep_namespace,
                   include_old_revisions=args.include_old_revisions,
                   existing=existing, existing_rules=existing_rules)
    for line in summarize(result, outcome, namespaces_given=namespaces is not None,
                          merging=bool(existing)):
        print(line, file=err)
    complete = not outcome.conflicts
    if not outcome.rules:
        print("no image to copy: nothing written", file=err)
        return False
    if args.merge and not outcome.added and existing:
        print(f"nothing new: {output} left as it was", file=err)
        return complete

    check_loadable(outcome.rules, output, repo, environ)
    text = render(outcome.rules, as_yaml=not to_stdout and is_yaml(output))
    if to_stdout:
        sys.stdout.write(text)
        sys.stdout.flush()
        return complete
    write_file(output, text, replace=args.force or args.merge)
    if args.merge and existing:
        print(f"merged into {output}: {len(existing)} existing "
              f"{'entry' if len(existing) == 1 else 'entries'} kept, "
              f"{len(outcome.added)} added", file=err)
        for source, target in outcome.added.items():
            print(f"added {source} -> {target}", file=err)
    else:
        print(f"wrote {plural(len(outcome.rules), 'rule')} to {output}", file=err)
    return complete


def run_config(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`migrator config`: the images a Kubernetes cluster runs, as a rules file."""
    try:
        complete = write_cluster_rules(args, environ, sys.stderr)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print("nothing was written: fix the input above and run again", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ClusterError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if complete else EXIT_FAILED
