"""The flags that name the input files and what they choose, and the reading of those files:
every problem of the settings, the auth and the rules at once, or nothing runs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from pydantic import SecretStr

from migrator.auth import SECRET_FIELDS, AuthFile, load_auth, parse_auth, secret_problem
from migrator.commands.common import non_negative_int, platform_list, regex, settings_from
from migrator.errors import ConfigError, InvalidReference
from migrator.reference import combine_platforms, os_arch_platforms
from migrator.registry.credentials import RegistryAuth
from migrator.rules import Rule, load_rules, parse_rules, resolve_defaults
from migrator.settings import Settings


def add_file_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that name and complete the input files."""
    parser.add_argument("--auth", metavar="FILE",
                        help="credentials per registry, JSON or YAML (default ./auth.json)")
    parser.add_argument("--images", metavar="FILE",
                        help="sync rules, JSON or YAML (default ./images.json)")
    parser.add_argument("--config", metavar="FILE",
                        help="image-syncer's combined file: a mapping with `auth:` and "
                             "`images:`, instead of --auth and --images")
    parser.add_argument("--src", metavar="REF",
                        help="one source image instead of an images file (with --dst)")
    parser.add_argument("--dst", metavar="REF", default="",
                        help="its target (empty: --registry/--namespace, as in rule 8)")
    parser.add_argument("--src-insecure", action="store_true",
                        help="--src's registry speaks plain HTTP or has a certificate that "
                             "cannot be verified (auth.json's insecure: true)")
    parser.add_argument("--dst-insecure", action="store_true",
                        help="the same for --dst's registry")
    parser.add_argument("--registry", metavar="HOST",
                        help="default target registry for empty targets ($DEFAULT_REGISTRY)")
    parser.add_argument("--namespace", metavar="NS",
                        help="default target namespace for empty targets ($DEFAULT_NAMESPACE)")
    parser.add_argument("--allow-catalog", action="store_true",
                        help="let sources registry/namespace/* and registry/* copy every "
                             "repository the registry's catalog lists")


def add_input_flags(parser: argparse.ArgumentParser) -> None:
    """The input files' flags and what chooses the images of every command that copies or
    compares them."""
    add_file_flags(parser)
    parser.add_argument("-r", "--retries", type=non_negative_int, default=3, metavar="N",
                        help="retries of a task that failed for a reason that can pass (reset, "
                             "timeout, 408, 429, 5xx); others fail at once (default 3)")
    parser.add_argument("--platform", type=platform_list, default=frozenset(),
                        metavar="OS/ARCH,...",
                        help="copy only these platforms of multi-platform images (the index "
                             "written then has a digest of its own)")
    parser.add_argument("--os", action="append", default=[], metavar="OS",
                        help="image-syncer's platform filter, repeatable: only these systems "
                             "(combines with --arch and --platform)")
    parser.add_argument("--arch", action="append", default=[], metavar="ARCH[:VARIANT]",
                        help="image-syncer's platform filter, repeatable: only these "
                             "architectures (e.g. --arch amd64 --arch arm64:v8); a "
                             "single-platform image of another one is skipped")
    parser.add_argument("--force", action="store_true",
                        help="write every manifest even when the target already has it "
                             "(blobs present are still skipped)")
    parser.add_argument("--no-referrers", dest="referrers", action="store_false",
                        help="do not copy the signatures, SBOMs and attestations of images")
    parser.add_argument("--include-foreign-layers", dest="foreign_layers",
                        action="store_true",
                        help="copy foreign / non-distributable layers (Windows base layers) "
                             "from the source registry too; by default they are left where "
                             "their URLs point, as skopeo and crane do")
    parser.add_argument("--immutable-tags", type=regex, metavar="REGEX",
                        help="tags (full match) that never change once synced: those the "
                             "record holds are skipped without a request (rules may set "
                             "their own immutable_tags)")


CONFIG_KEYS = ("auth", "images")


def load_inputs(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[Settings, AuthFile, list[Rule]]:
    """Validate settings and both files completely; every problem of all three at once."""
    problems: list[str] = []
    settings: Settings | None = None
    auth: AuthFile | None = None
    rules: list[Rule] = []
    try:
        settings = settings_from(environ)
    except ConfigError as exc:
        problems.extend(exc.problems)
    registry, namespace = resolve_defaults(args.registry, args.namespace, environ)
    if args.config and (args.auth or args.images or args.src):
        raise ConfigError("--config holds the auth and the images: give it alone, or --auth "
                          "with --images (or --src)")
    if args.config:
        auth_data, images_data, found = _read_config(args.config)
        problems.extend(found)
    try:
        if args.config:
            auth = parse_auth(auth_data, name=f"{args.config}: auth", environ=environ,
                              base_dir=os.path.dirname(os.path.abspath(args.config)))
        else:
            auth = load_auth(args.auth or "auth.json", environ=environ,
                             required=bool(args.auth))
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        if args.src and args.images:
            raise ConfigError("--src and --images: give one image or a rules file, not both")
        if args.config:
            if images_data is not None:
                rules = parse_rules(images_data, filename=f"{args.config}: images",
                                    default_registry=registry, default_namespace=namespace,
                                    allow_catalog=args.allow_catalog)
        elif args.src:
            rules = parse_rules({args.src: args.dst}, filename="--src/--dst",
                                default_registry=registry, default_namespace=namespace,
                                allow_catalog=args.allow_catalog)
            if auth is not None and rules:
                auth = _one_image_auth(auth, rules[0], args, environ)
        elif args.dst:
            raise ConfigError("--dst: give the source image with --src")
        elif args.src_insecure or args.dst_insecure:
            raise ConfigError("--src-insecure/--dst-insecure: they apply to --src and --dst; "
                              "in a rules file, set insecure: true in the auth file")
        else:
            rules = load_rules(args.images or "images.json", default_registry=registry,
                               default_namespace=namespace, allow_catalog=args.allow_catalog)
        rules_read = not args.config or images_data is not None
    except ConfigError as exc:
        rules_read = False
        problems.extend(exc.problems)
    if hasattr(args, "platform"):
        try:
            args.platform = combine_platforms(args.platform,
                                              os_arch_platforms(args.os, args.arch))
        except InvalidReference as exc:
            problems.append(f"--platform/--os/--arch: {exc}")
    if auth is not None and auth.unresolved:
        if rules_read:
            problems.extend(_unresolved_credentials(auth, rules))
        else:  # which entries the rules use is unknown: each may be needed
            problems.extend(p for found in auth.unresolved.values() for p in found)
    if problems:
        raise ConfigError(problems)
    assert settings is not None and auth is not None
    return settings, auth, rules


# Credentials of --src/--dst without an auth file, as CI passes secrets: never on the command
# line, where every user of the machine can read them.
ONE_IMAGE_CREDENTIALS = {"src": ("MIGRATOR_SRC_USERNAME", "MIGRATOR_SRC_PASSWORD"),
                         "dst": ("MIGRATOR_DST_USERNAME", "MIGRATOR_DST_PASSWORD")}


def _one_image_auth(auth: AuthFile, rule: Rule, args: argparse.Namespace,
                    environ: Mapping[str, str]) -> AuthFile:
    """The auth file with --src's and --dst's own settings: --src-insecure/--dst-insecure and
    the MIGRATOR_SRC_*/MIGRATOR_DST_* credentials win over its entries for their image."""
    problems = []
    for side, reference in (("src", rule.source), ("dst", rule.target)):
        update: dict[str, object] = {}
        if getattr(args, f"{side}_insecure"):
            update["insecure"] = True
        user_variable, password_variable = ONE_IMAGE_CREDENTIALS[side]
        username, password = environ.get(user_variable), environ.get(password_variable)
        if username or password:
            if not (username and password):
                problems.append(f"{user_variable} and {password_variable}: set both, or "
                                "neither for the auth file's credentials")
                continue
            for variable, name, value in ((user_variable, "username", username),
                                          (password_variable, "password", password)):
                problem = secret_problem(name, value)
                if problem is not None:
                    problems.append(f"{variable}: {problem}")
            update.update(username=username, password=SecretStr(password))
        if not update:
            continue
        try:
            entry = auth.lookup(reference.registry, reference.repository)
        except ConfigError:
            if "username" not in update:
                continue  # the entry's unset variable is reported with the rules that use it
            entry = RegistryAuth()  # these credentials replace the unresolved ones
        auth = auth.with_entry(reference.registry, reference.repository,
                               entry.model_copy(update=update))
    if problems:
        raise ConfigError(problems)
    return auth


def _unresolved_credentials(auth: AuthFile, rules: list[Rule]) -> list[str]:
    """The problems of auth entries whose environment variable is unset and that a rule uses;
    the entries no rule uses are only mentioned, on stderr."""
    used: dict[str, None] = {}
    for rule in rules:
        for reference in (rule.source, rule.target):
            used.update(dict.fromkeys(auth.unresolved_for(reference.registry,
                                                          reference.repository)))
    for problems in auth.unresolved.values():
        if not used.keys() & set(problems):
            print(f"warning: {problems[0]}: no rule uses this entry, so it is left out",
                  file=sys.stderr)
    return list(used)


def _read_config(path: str) -> tuple[object, object, list[str]]:
    """image-syncer's combined file → (its `auth:`, its `images:`, problems)."""
    import difflib

    from migrator.documents import describe_type, load_document, quote

    document = load_document(path, required=True, raw_text_keys=frozenset(SECRET_FIELDS))
    if document.problems:
        return None, None, document.problems
    data = document.data
    if not isinstance(data, Mapping):
        return None, None, [f"{path}: the top level must be a mapping with auth and images, "
                            f"not {describe_type(data)}"]
    problems = []
    for key in data:
        if key not in CONFIG_KEYS:
            close = difflib.get_close_matches(str(key), CONFIG_KEYS, n=1)
            problems.append(f"{path}: unknown key {quote(key)}: " + (
                f"did you mean {quote(close[0])}?" if close else "the keys are auth and images"))
    if data.get("images") is None:
        problems.append(f"{path}: no images: the file needs an `images:` mapping of source "
                        "image to target")
    return data.get("auth"), data.get("images"), problems
