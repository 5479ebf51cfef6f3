"""The Mosquitto ACL shipped for devicefit fleets: each device is confined to its own topics.

Devices log in with their device id as MQTT username (``--mqtt mqtt://dev-a:PASSWORD@broker``); ``pattern`` rules
on ``%u`` let device A read only its own ``req`` / ``chunks``, write only its own ``status``, read the fleet's
shared ``artifacts/#`` (one publish per wave) and write host replies. It cannot read or publish B's topics. The
host user (default ``host``) reads and writes everything under ``devicefit/v1/``. Use with
``allow_anonymous false``, a ``password_file`` (``mosquitto_passwd``) and, on a network, a TLS listener.
"""

from __future__ import annotations

from pathlib import Path

ACL_TEMPLATE = """\
# devicefit fleet ACL (Mosquitto): MQTT username = device id; see devicefit.fleet.acl
pattern read devicefit/v1/+/%u/req
pattern read devicefit/v1/+/%u/chunks
pattern readwrite devicefit/v1/+/%u/status
pattern read devicefit/v1/+/artifacts/#
pattern write devicefit/v1/+/hosts/+/reply

user {host_user}
topic readwrite devicefit/v1/#
"""


def acl_text(host_user: str = "host") -> str:
    """The ACL file's text, granting ``host_user`` the whole ``devicefit/v1/`` tree."""
    if not host_user or any(c in host_user for c in " \n\t/+#"):
        raise ValueError(f"host user {host_user!r} is not a plain MQTT username")
    return ACL_TEMPLATE.format(host_user=host_user)


def write_acl(path: str | Path, host_user: str = "host") -> Path:
    """Write the ACL file (for ``acl_file`` in mosquitto.conf); returns its path."""
    p = Path(path)
    p.write_text(acl_text(host_user))
    return p
