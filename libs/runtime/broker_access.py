"""Who may do what on the broker and in Valkey (DESIGN rule 11): one identity per component.

Every component connects to NATS and Valkey as its own user (its component name), with a password
from its own secret. NATS lets each publish only:

* its own domain's subjects (``<ns>.po.>`` for po-publication, ...), plus the control plane's
  policy bucket (``$KV.<ns>_policy.>``) and repair instructions (``<ns>.repair.>``, the control plane's alone);
  invoice-status its marks bucket (``$KV.<ns>_invoice_marks.>``);
* the shared inboxes every component writes to: ``<ns>.auditin.>``, and of the exception stream only raises
  (``<ns>.exception.*.raised``), clearings of what it raised (``<ns>.exception.<component>.cleared``, its own
  subject) and processed replays (``<ns>.exception.*.replayed``) — the router's transitions are its alone;
* the JetStream API it needs: stream info, message gets and direct gets of any stream (reading is
  not restricted by domain), consumers (create, info, next), acks and flow control, creating any
  of the namespace's streams if missing (a create never changes an existing stream), and updating
  only the streams it owns. Deleting or purging streams, deleting messages or consumers is
  for the operator identity alone.

It subscribes to ``_INBOX.>`` only: replies and the push consumers' deliver subjects. Nothing may
subscribe to the domain subjects themselves; everything is read through JetStream.

The operator identity (``syncgov-admin``) holds every right; the CLI and the test fixtures use it.
There is no anonymous user: a client without credentials is refused at connect.

Valkey: each component's ACL user reaches only its own keys (``~<ns>:<component>:*``) with every
command except the ``@dangerous`` ones (FLUSHALL, KEYS, CONFIG, ...); the default user is off.

``namespace=None`` writes rules that hold for any namespace (the test servers host one namespace
per test): the first subject token becomes ``*``, stream names become ``*`` (so stream updates are
then nobody's right but the operator's).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

from libs.runtime.streams import ALL_STREAMS
from libs.runtime.subjects import Namespace

ADMIN_USER = "syncgov-admin"
INBOX_DOMAINS = ("exception", "auditin")


@dataclass(frozen=True, slots=True)
class BrokerRole:
    component: str
    domains: tuple[str, ...]  # object domains it publishes, whose streams it owns
    kv_buckets: tuple[str, ...] = ()  # KV buckets it writes (bucket <ns>_<name>)
    extra_stream_updates: tuple[str, ...] = ()  # inbox streams it owns beside its domains


ROLES: tuple[BrokerRole, ...] = (
    # The control plane alone asks adapters to repair drift (libs/runtime/streams.REPAIR: <ns>.repair.>).
    BrokerRole(
        "control-plane", ("audit", "repair"), kv_buckets=("policy",), extra_stream_updates=("auditin", "exception")
    ),
    BrokerRole("supplier-normalization", ("supplier",)),
    BrokerRole("po-publication", ("po",)),
    BrokerRole("receipt-reconciliation", ("receipt",)),
    # invoice-status keeps how far its follow-up of submissions got (services/invoice_status/settlement.py).
    BrokerRole("invoice-status", ("invoice",), kv_buckets=("invoice_marks",)),
    # The router keeps JetStream's max-deliveries advisories in a stream of its own (libs/runtime/streams.ADVISORY).
    BrokerRole("exception-router", ("exception",), extra_stream_updates=("advisory",)),
)
COMPONENT_USERS = tuple(role.component for role in ROLES)


def role(component: str) -> BrokerRole:
    for candidate in ROLES:
        if candidate.component == component:
            return candidate
    raise KeyError(f"no broker role for {component!r}")


def _stream(namespace: str | None, domain: str) -> str:
    return "*" if namespace is None else Namespace(namespace).stream(domain)


def _bucket(namespace: str | None, bucket: str) -> str:
    return "*" if namespace is None else Namespace(namespace).bucket(bucket)


def _kv_stream(namespace: str | None, bucket: str) -> str:
    return "*" if namespace is None else f"KV_{_bucket(namespace, bucket)}"


def publish_allow(component: str, namespace: str | None) -> list[str]:
    """The subjects ``component`` may publish to, most specific first."""
    who = role(component)
    root = "*" if namespace is None else namespace
    subjects = [f"{root}.{domain}.>" for domain in (*who.domains, *INBOX_DOMAINS) if domain and domain != "exception"]
    if "exception" in who.domains:
        subjects.append(f"{root}.exception.>")
    else:
        # The exception stream also holds the router's transitions: every other component raises
        # (``<id>.raised``), says a condition it raised no longer holds (``<component>.cleared``, its own subject:
        # the router closes only what the publishing component raised) and records a replay its consumer processed
        # (``<id>.replayed``), nothing else, so no service can acknowledge, resolve or reroute an exception in a
        # person's name.
        subjects += [
            f"{root}.exception.*.raised",
            f"{root}.exception.{component}.cleared",
            f"{root}.exception.*.replayed",
        ]
    subjects = list(dict.fromkeys(subjects))
    # A subject token is matched whole: with any namespace, any bucket.
    subjects += [f"$KV.{_bucket(namespace, bucket)}.>" for bucket in who.kv_buckets]
    streams = [_stream(namespace, spec.domain) for spec in ALL_STREAMS] + [_kv_stream(namespace, "policy")]
    streams += [_kv_stream(namespace, bucket) for bucket in who.kv_buckets]
    subjects += [f"$JS.API.STREAM.CREATE.{name}" for name in dict.fromkeys(streams)]
    if namespace is not None:
        owned = [_stream(namespace, d) for d in (*who.domains, *who.extra_stream_updates)]
        owned += [_kv_stream(namespace, bucket) for bucket in who.kv_buckets]
        subjects += [f"$JS.API.STREAM.UPDATE.{name}" for name in dict.fromkeys(owned)]
    subjects += [
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.*",
        "$JS.API.STREAM.MSG.GET.*",
        "$JS.API.DIRECT.GET.>",
        "$JS.API.CONSUMER.CREATE.>",
        "$JS.API.CONSUMER.DURABLE.CREATE.>",
        "$JS.API.CONSUMER.INFO.>",
        "$JS.API.CONSUMER.MSG.NEXT.>",
        "$JS.ACK.>",
        "$JS.FC.>",
    ]
    return subjects


SUBSCRIBE_ALLOW = ("_INBOX.>",)


def _quoted(items: Iterable[str]) -> str:
    return ", ".join(f'"{item}"' for item in items)


def nats_authorization(
    password: Callable[[str], str], namespace: str | None, components: Iterable[str] = COMPONENT_USERS
) -> str:
    """The ``authorization { users = [...] }`` block of nats-server's configuration.

    ``password(user)`` returns the value as it goes into the file: a quoted literal (``"s3cret"``)
    or an environment reference (``$SYNCGOV_NATS_PASSWORD_PO_PUBLICATION``). There is no
    ``no_auth_user``: a client without credentials is refused.
    """
    lines = ["authorization {", "  users = ["]
    lines.append(f'    {{user: "{ADMIN_USER}", password: {password(ADMIN_USER)}}}')
    wanted = set(components)
    for who in ROLES:
        if who.component not in wanted:
            continue
        lines.append(f'    {{user: "{who.component}", password: {password(who.component)}, permissions: {{')
        lines.append(f"      publish: {{allow: [{_quoted(publish_allow(who.component, namespace))}]}}")
        lines.append(f"      subscribe: {{allow: [{_quoted(SUBSCRIBE_ALLOW)}]}}")
        lines.append("    }}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def valkey_key_pattern(component: str, namespace: str | None) -> str:
    return f"~{'*' if namespace is None else namespace}:{component}:*"


def valkey_acl_rules(component: str, namespace: str | None) -> list[str]:
    """The ACL rules of ``component``'s Valkey user, without its password."""
    role(component)
    return ["on", "resetkeys", valkey_key_pattern(component, namespace), "resetchannels", "+@all", "-@dangerous"]


def env_name(prefix: str, user: str) -> str:
    """``SYNCGOV_NATS_PASSWORD`` + ``po-publication`` -> ``SYNCGOV_NATS_PASSWORD_PO_PUBLICATION``."""
    return f"{prefix}_{user.upper().replace('-', '_')}"


@dataclass(frozen=True)
class BrokerCredentials:
    """One password per user (the operator and every component), for NATS and Valkey alike."""

    passwords: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def generate(cls) -> BrokerCredentials:
        return cls({user: secrets.token_urlsafe(24) for user in (ADMIN_USER, *COMPONENT_USERS)})

    def password(self, user: str) -> str:
        return self.passwords[user]

    def url(self, base_url: str, user: str) -> str:
        """``base_url`` (one or more, comma-separated) with ``user``'s credentials in each."""
        return ",".join(with_credentials(url.strip(), user, self.password(user)) for url in base_url.split(","))


def with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def replace_credentials(urls: str, user: str | None, password: str | None) -> str:
    """``urls`` (comma-separated) with ``user`` and ``password`` in each, where given; the rest kept."""
    if user is None and password is None:
        return urls
    out = []
    for url in urls.split(","):
        parts = urlsplit(url.strip())
        new_user = quote(user, safe="") if user is not None else (parts.username or "")
        new_password = quote(password, safe="") if password is not None else (parts.password or "")
        netloc = f"{new_user}:{new_password}@{parts.netloc.rsplit('@', 1)[-1]}"
        out.append(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
    return ",".join(out)


def without_credentials(url: str) -> str:
    """For logs and tables: the URL(s) with any user and password removed."""
    out = []
    for one in url.split(","):
        parts = urlsplit(one.strip())
        netloc = parts.netloc.rsplit("@", 1)[-1]
        out.append(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
    return ",".join(out)


def kubernetes_nats_authorization(namespace: str, components: Iterable[str]) -> str:
    """The file deploy/k8s/components/broker-auth/nats-authorization.conf holds: passwords come from
    the NATS container's environment (``$SYNCGOV_NATS_PASSWORD_<USER>``, each from its Secret)."""
    header = (
        "# Generated by libs.runtime.broker_access.kubernetes_nats_authorization; a unit test keeps it equal.\n"
        "# One user per component, subject permissions per docs/security.md; no anonymous access.\n"
    )
    return header + nats_authorization(
        lambda user: f"${env_name('SYNCGOV_NATS_PASSWORD', user)}", namespace, components
    )


def valkey_acl_args(namespace: str, components: Iterable[str], password: Callable[[str], str]) -> list[str]:
    """valkey-server arguments: the default user off, the operator, each component's ACL user."""
    args = ["--user", "default", "off", "resetkeys", "resetchannels", "-@all"]
    args += ["--user", ADMIN_USER, "on", f">{password(ADMIN_USER)}", "~*", "&*", "+@all"]
    for component in components:
        rules = valkey_acl_rules(component, namespace)
        args += ["--user", component, rules[0], f">{password(component)}", *rules[1:]]
    return args
