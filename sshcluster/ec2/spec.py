"""The EC2 cluster spec: what ``sshcluster ec2 up`` starts, read and checked once.

A spec is a YAML file with one ``ec2:`` mapping (``ec2.example.yaml`` documents every
field). It is read like the inventory, with the same line-aware loader, so every mistake
is an :class:`~sshcluster.errors.InventoryError` naming the file, the line and the field
(exit status 2 in the CLI). Past :func:`load_spec` the code trusts :class:`EC2Spec`.

The instances' user data is rendered by :mod:`sshcluster.ec2.userdata`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sshcluster.ec2.images import IMAGE_NAMES
from sshcluster.ec2.userdata import user_data
from sshcluster.net import R_PORT_RANGE
from sshcluster.yamlfile import Map, Reader, Seq, describe, load_yaml, read_text

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?\Z")
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}\Z")
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}\Z")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+\Z")
_SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}\Z")
_SECURITY_GROUP = re.compile(r"^sg-[0-9a-f]{8,17}\Z")
_KEY_NAME = re.compile(r"^[\x20-\x7e]{1,255}\Z")
_DURATION = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m(?:in)?)?\Z")

#: What a cluster name and a region look like, as messages say it.
NAME_RULE = ("a cluster name of lower-case letters, digits and '-' (at most 32, starting "
             "and ending with a letter or digit)")
REGION_RULE = "an AWS region such as us-east-1"

#: Shortest and longest ``max_lifetime``: shorter would power instances off before ``up``
#: is done; longer is what "transient" rules out (start a new cluster instead).
MIN_LIFETIME = timedelta(minutes=10)
MAX_LIFETIME = timedelta(days=7)

#: EC2 refuses user data over 16 KB (before base64).
MAX_USER_DATA = 16 * 1024


_R_PACKAGE = re.compile(r"^[A-Za-z][A-Za-z0-9.]*\Z")
_URL = re.compile(r"^https?://[A-Za-z0-9._~:/%+-]+\Z")
_REPOS = re.compile(r"^(?:binaries|source|https?://[A-Za-z0-9._~:/%+-]+)\Z")

#: The CRAN mirror for packages Debian and Ubuntu do not package (``cran:``).
DEFAULT_CRAN = "https://cloud.r-project.org"
#: The root volume's size in GiB (``disk_gb:``): room for R and packages built from source
#: (an image's own 8 GiB fill up quickly).
DEFAULT_DISK_GB = 30
#: What ``ncore`` the inventory gets: physical cores, or every vCPU (hyperthreads).
NCORES = ("cores", "vcpus")
#: Where R comes from (``r_version:``): the image's distribution (``image``: its R, or
#: Debian's/Ubuntu's own package of it), or CRAN's apt repository for that distribution
#: (``cran``: a current R, installed over the image's).
R_VERSIONS = ("image", "cran")

_KEYS = ("name", "region", "image", "instance_type", "count", "user", "max_lifetime",
         "key_name", "identity_file", "subnet_id", "security_group_id", "spot", "setup",
         "ssh_cidr", "allow_ssh_from_anywhere", "port", "address", "primary", "r_packages",
         "cran", "repos", "r_version", "disk_gb", "ncore")
_REQUIRED = ("name", "region", "image", "instance_type", "count", "max_lifetime")


@dataclass(frozen=True)
class EC2Spec:
    """A validated cluster spec.

    ``key_name`` / ``security_group_id`` None: ``up`` creates them for this cluster (and
    ``down`` deletes them). ``ssh_cidr`` are the address ranges SSH is allowed from when
    the security group is created. ``port`` is the R port (None: R's 11000-11999).
    ``address`` is how this machine reaches the instances (``public`` or ``private`` IP);
    ``primary`` is the R primary as the workers see it: ``auto`` (detected by
    ``sshcluster check``), ``first`` (the first instance's private IP) or an address.

    ``image`` is an AMI id or a name of :data:`~sshcluster.ec2.images.IMAGE_NAMES`;
    ``user`` defaults to such an image's login user. ``subnet_ids`` are the subnets to
    start in, tried in turn when AWS has no capacity in one (default: the default VPC's).
    ``r_packages`` are installed at first boot (Debian's/Ubuntu's ``r-cran-*`` where they
    exist, else from ``repos``: ``binaries``, Posit Package Manager's Linux binaries for
    the image's distribution at a snapshot that still supports its R, where it serves
    that distribution, else ``cran``; ``source``, ``cran``; or a repository URL) and
    ``up`` waits until they load. ``r_version`` is ``image`` (the distribution's R) or
    ``cran`` (CRAN's apt repository for the distribution: a current R). ``disk_gb`` is the root
    volume's size. ``ncore`` is ``cores`` (physical cores per instance) or ``vcpus``.
    """

    name: str
    region: str
    image: str
    instance_type: str
    count: int
    user: str
    max_lifetime: timedelta
    key_name: str | None = None
    identity_file: str | None = None
    subnet_ids: tuple[str, ...] = ()
    security_group_id: str | None = None
    spot: bool = False
    setup: str | None = None
    ssh_cidr: tuple[str, ...] = ()
    allow_ssh_from_anywhere: bool = False
    port: int | None = None
    address: str = "public"
    primary: str = "auto"
    r_packages: tuple[str, ...] = ()
    cran: str = DEFAULT_CRAN
    repos: str = "binaries"
    r_version: str = "image"
    disk_gb: int = DEFAULT_DISK_GB
    ncore: str = "cores"
    path: str | None = field(default=None, compare=False)

    @property
    def r_ports(self) -> tuple[int, int]:
        """The R port range the security group opens between members."""
        return (self.port, self.port) if self.port else R_PORT_RANGE


def is_cluster_name(text: str) -> bool:
    """True if ``text`` is a valid cluster name (:data:`NAME_RULE`)."""
    return _NAME.fullmatch(text) is not None


def is_region(text: str) -> bool:
    """True if ``text`` has the form of an AWS region name (:data:`REGION_RULE`); whether
    the region exists only AWS can say."""
    return _REGION.fullmatch(text) is not None


def parse_duration(text: str) -> timedelta | None:
    """``"2h"``, ``"90m"``, ``"1h30m"``, ``"1d"`` as a timedelta; None if not a duration."""
    match = _DURATION.match(text.strip())
    if not match or not any(match.groupdict().values()):
        return None
    if len(text) > 40:  # thousands of digits: no lifetime, and slow to convert
        return None
    d, h, m = (int(match[g] or 0) for g in ("d", "h", "m"))
    try:
        return timedelta(days=d, hours=h, minutes=m)
    except OverflowError:  # more days than a timedelta holds: no lifetime either
        return None


def _text(reader: Reader, m: Map, key: str, pattern: re.Pattern[str], what: str,
          hint: str | None = None) -> str:
    value, line = m[key], reader.line_of(m, key)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise reader.fail(f"expected {what}, got {describe(value)}", line=line,
                          field=f"ec2.{key}", hint=hint)
    return value


def _image(reader: Reader, m: Map) -> str:
    value = m["image"]
    if isinstance(value, str) and (value in IMAGE_NAMES or _AMI.fullmatch(value)):
        return value
    raise reader.fail(f"expected an AMI id such as ami-0123456789abcdef0 or one of "
                      f"{', '.join(IMAGE_NAMES)}, got {describe(value)}",
                      line=reader.line_of(m, "image"), field="ec2.image",
                      hint="AMI ids differ between regions; a name is looked up in yours")


def _login_user(reader: Reader, m: Map) -> str:
    if "user" in m:
        return reader.user(m["user"], "ec2.user", reader.line_of(m, "user"))
    image = m["image"]
    if isinstance(image, str) and image in IMAGE_NAMES:
        return IMAGE_NAMES[image].user
    raise reader.fail("'user' is required with an AMI id", line=m.line, field="ec2",
                      hint="the image's login user: ubuntu (Ubuntu), admin (Debian), "
                           "ec2-user (Amazon Linux)")


def _names(reader: Reader, m: Map, key: str, pattern: re.Pattern[str],
           what: str) -> tuple[str, ...]:
    """A list of names (or one name) that each match ``pattern``."""
    raw, line = m[key], reader.line_of(m, key)
    items = list(raw) if isinstance(raw, Seq) else [raw]
    lines = raw.item_lines if isinstance(raw, Seq) else [line]
    out = []
    for i, (item, item_line) in enumerate(zip(items, lines, strict=True)):
        if not isinstance(item, str) or not pattern.fullmatch(item):
            where = f"ec2.{key}[{i}]" if isinstance(raw, Seq) else f"ec2.{key}"
            raise reader.fail(f"expected {what}, got {describe(item)}", line=item_line,
                              field=where)
        if item not in out:
            out.append(item)
    return tuple(out)


def _subnets(reader: Reader, m: Map) -> tuple[str, ...]:
    subnets = _names(reader, m, "subnet_id", _SUBNET, "a subnet id (subnet-...)")
    if not subnets:
        raise reader.fail("the list is empty", line=reader.line_of(m, "subnet_id"),
                          field="ec2.subnet_id")
    return subnets


def _flag(reader: Reader, m: Map, key: str) -> bool:
    value = m[key]
    if not isinstance(value, bool):
        raise reader.fail(f"expected true or false, got {describe(value)}",
                          line=reader.line_of(m, key), field=f"ec2.{key}")
    return value


def _cidrs(reader: Reader, m: Map, anywhere_ok: bool) -> tuple[str, ...]:
    raw, line = m["ssh_cidr"], reader.line_of(m, "ssh_cidr")
    items = list(raw) if isinstance(raw, Seq) else [raw]
    lines = raw.item_lines if isinstance(raw, Seq) else [line]
    out = []
    for i, (item, item_line) in enumerate(zip(items, lines, strict=True)):
        where = f"ec2.ssh_cidr[{i}]" if isinstance(raw, Seq) else "ec2.ssh_cidr"
        try:
            net = ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            raise reader.fail(f"expected an address range such as 203.0.113.7/32, got "
                              f"{describe(item)}", line=item_line, field=where) from None
        if isinstance(item, bool) or "/" not in str(item):
            raise reader.fail(f"{describe(item)} has no prefix length", line=item_line, field=where,
                              hint=f"write {item}/32 for one IPv4 address")
        if net.prefixlen == 0 and not anywhere_ok:
            raise reader.fail(
                f"{net} lets the whole internet try to log in", line=item_line, field=where,
                hint="give your own address range (e.g. your public IP with /32), or set "
                     "'allow_ssh_from_anywhere: true' if you really mean it")
        out.append(str(net))
    if not out:
        raise reader.fail("the list is empty", line=line, field="ec2.ssh_cidr")
    return tuple(out)


def _read_spec(doc: Any, reader: Reader) -> EC2Spec:
    if doc is None:
        raise reader.fail("the file is empty", line=None, hint="see ec2.example.yaml")
    top = reader.mapping(doc, "", 1, ("ec2",), required=("ec2",))
    m = reader.mapping(top["ec2"], "ec2", reader.line_of(top, "ec2"), _KEYS,
                       required=_REQUIRED)

    def line(key: str) -> int:
        return reader.line_of(m, key)

    lifetime_raw = m["max_lifetime"]
    lifetime = parse_duration(lifetime_raw) if isinstance(lifetime_raw, str) else None
    if lifetime is None:
        raise reader.fail(f"expected a duration such as 2h, 90m or 1h30m, got "
                          f"{describe(lifetime_raw)}", line=line("max_lifetime"),
                          field="ec2.max_lifetime")
    if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
        raise reader.fail(f"{lifetime_raw} is outside {MIN_LIFETIME} to {MAX_LIFETIME.days} "
                          "days", line=line("max_lifetime"), field="ec2.max_lifetime")

    anywhere = _flag(reader, m, "allow_ssh_from_anywhere") if "allow_ssh_from_anywhere" in m \
        else False
    spec: dict[str, Any] = {
        "name": _text(reader, m, "name", _NAME, NAME_RULE),
        "region": _text(reader, m, "region", _REGION, REGION_RULE),
        "image": _image(reader, m),
        "instance_type": _text(reader, m, "instance_type", _INSTANCE_TYPE,
                               "an instance type such as c7i.large"),
        "count": reader.integer(m["count"], "ec2.count", line("count"), low=1, high=1000,
                                what="a number of instances (1-1000)"),
        "user": _login_user(reader, m),
        "max_lifetime": lifetime,
        "allow_ssh_from_anywhere": anywhere,
        "path": reader.path,
    }
    if "key_name" in m:
        spec["key_name"] = _text(reader, m, "key_name", _KEY_NAME, "the name of a key pair")
    if "identity_file" in m:
        spec["identity_file"] = reader.path_value(m["identity_file"], "ec2.identity_file",
                                                  line("identity_file"))
    if "subnet_id" in m:
        spec["subnet_ids"] = _subnets(reader, m)
    if "r_packages" in m:
        spec["r_packages"] = _names(reader, m, "r_packages", _R_PACKAGE, "an R package name")
    if "cran" in m:
        spec["cran"] = _text(reader, m, "cran", _URL, "the URL of a CRAN mirror",
                             hint=f"for example {DEFAULT_CRAN}")
    if "repos" in m:
        spec["repos"] = _text(reader, m, "repos", _REPOS,
                              "binaries, source or the URL of an R package repository")
    if "r_version" in m:
        if m["r_version"] not in R_VERSIONS:
            raise reader.fail(f"expected image or cran, got {describe(m['r_version'])}",
                              line=line("r_version"), field="ec2.r_version",
                              hint="image: the R of the image's Debian or Ubuntu (the "
                                   "default); cran: a current R from CRAN's apt repository "
                                   "for that distribution")
        spec["r_version"] = m["r_version"]
    if "disk_gb" in m:
        spec["disk_gb"] = reader.integer(m["disk_gb"], "ec2.disk_gb", line("disk_gb"), low=8,
                                         high=16384, what="a root volume size in GiB (8-16384)")
    if "ncore" in m:
        if m["ncore"] not in NCORES:
            raise reader.fail(f"expected cores or vcpus, got {describe(m['ncore'])}",
                              line=line("ncore"), field="ec2.ncore",
                              hint="cores: one R worker per physical core (the default); "
                                   "vcpus: one per vCPU, hyperthreads included")
        spec["ncore"] = m["ncore"]
    if "security_group_id" in m:
        spec["security_group_id"] = _text(reader, m, "security_group_id", _SECURITY_GROUP,
                                          "a security group id (sg-...)")
    if "spot" in m:
        spec["spot"] = _flag(reader, m, "spot")
    if "port" in m:
        spec["port"] = reader.port(m["port"], "ec2.port", line("port"))
    if "address" in m:
        if m["address"] not in ("public", "private"):
            raise reader.fail(f"expected public or private, got {describe(m['address'])}",
                              line=line("address"), field="ec2.address")
        spec["address"] = m["address"]
    if "primary" in m:
        spec["primary"] = "first" if m["primary"] == "first" else reader.hostname(
            m["primary"], "ec2.primary", line("primary"), allow_auto=True)
    if "setup" in m:
        if not isinstance(m["setup"], str) or "\x00" in m["setup"]:
            raise reader.fail(f"expected a shell script, got {describe(m['setup'])}",
                              line=line("setup"), field="ec2.setup",
                              hint="write it as a YAML block: 'setup: |' then the script")
        spec["setup"] = m["setup"]
    if "ssh_cidr" in m:
        spec["ssh_cidr"] = _cidrs(reader, m, anywhere)
    elif "security_group_id" not in m:
        raise reader.fail(
            "'ssh_cidr' is required when sshcluster creates the security group",
            line=m.line, field="ec2",
            hint="give the address range you connect from, e.g. 'ssh_cidr: 203.0.113.7/32'")
    result = EC2Spec(**spec)
    start = datetime(2000, 1, 1).astimezone()  # (the lifetime's digits, as up writes them)
    size = len(user_data(result, start + result.max_lifetime, now=start).encode())
    if size > MAX_USER_DATA:
        raise reader.fail(f"the setup script makes the user data {size} bytes; EC2 takes "
                          f"at most {MAX_USER_DATA}", line=line("setup"), field="ec2.setup",
                          hint="download a longer script from the setup script instead")
    return result


def parse_spec(text: str, path: str | None = None) -> EC2Spec:
    """Parse and validate spec YAML ``text`` (``path`` is used in messages and to resolve
    ``identity_file``). Raises :class:`~sshcluster.errors.InventoryError`."""
    reader = Reader(path or "<ec2 spec>",
                     Path(path).resolve().parent if path else Path.cwd())
    return _read_spec(load_yaml(text, reader), reader)


def load_spec(path: str | os.PathLike[str]) -> EC2Spec:
    """Read and validate the spec file at ``path``. Raises InventoryError."""
    return parse_spec(read_text(path, what="a spec file",
                                example="start from 'sshcluster ec2 example > ec2.yaml'"),
                      str(path))


__all__ = ["DEFAULT_CRAN", "DEFAULT_DISK_GB", "MAX_LIFETIME", "MIN_LIFETIME", "NAME_RULE",
           "NCORES", "REGION_RULE", "EC2Spec",
           "is_cluster_name", "is_region", "load_spec", "parse_duration", "parse_spec"]
