"""How a user reaches the local cluster: its PROFILEMESH_REDIS_* settings (URL, user, password file, TLS files),
and the clients made from them (through common/storage/nodes.py, with the deployment's own options)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from common.runtime.config import Settings
from common.storage import acl, nodes
from common.storage.cluster import ClusterClient
from localdev.certs import Authority
from localdev.passwords import Passwords


@functools.lru_cache(maxsize=64)
def _settings(env: tuple[tuple[str, str], ...]) -> Settings:
    """Settings from the variables `env` lists; cached, as making them takes milliseconds and the readiness loop
    makes a client every 0.1 s per node."""
    return Settings.from_env(dict(env))


@dataclass(frozen=True)
class Access:
    """Reaching the cluster through its node at `host:port` (the seed), with TLS or not."""

    host: str
    port: int
    tls: bool
    passwords: Passwords
    authority: Authority

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        """The URL with the admin's credentials in it: only for benchmark tools on their own throwaway cluster
        (they pass URLs between processes); never logged. Everything else passes credentials as arguments."""
        password = self.passwords.of(acl.ADMIN_USER)
        return f"{'rediss' if self.tls else 'redis'}://{acl.ADMIN_USER}:{password}@{self.host}:{self.port}"

    def _env(self, user: str) -> dict[str, str]:
        env = {
            "PROFILEMESH_REDIS_URL": self.url,
            "PROFILEMESH_REDIS_USERNAME": user,
            "PROFILEMESH_REDIS_PASSWORD_FILE": str(self.passwords.file(user)),
        }
        if self.tls:
            env["PROFILEMESH_REDIS_CA_FILE"] = str(self.authority.ca_file)
        return env

    def user_env(self, component: str | None) -> dict[str, str]:
        """The PROFILEMESH_REDIS_* settings of `component`'s user (None: the admin), TLS files included."""
        env = self._env(acl.USERS[component] if component else acl.ADMIN_USER)
        if self.tls:
            identity = self.authority.identity(component or "admin")
            env.update(PROFILEMESH_REDIS_CERT_FILE=str(identity.cert), PROFILEMESH_REDIS_KEY_FILE=str(identity.key))
        return env

    def settings(self, user: str) -> Settings:
        """`user`'s connection settings (password and CA, no client certificate): for tests' and tools' clients."""
        # The password itself is in the key, read now: a cluster made again in the same directory has new ones.
        env = {**self._env(user), "PROFILEMESH_REDIS_PASSWORD": self.passwords.of(user)}
        return _settings(tuple(sorted(env.items())))

    def client_options(self, user: str) -> dict[str, Any]:
        """`user`'s connection options as keyword arguments of a client made from host and port."""
        return nodes.node_options(self.settings(user))

    def client(self, user: str, **kwargs: Any) -> nodes.SyncClusterClient:
        return nodes.cluster_client(self.host, self.port, self.settings(user), **kwargs)

    def async_client(self, user: str, **kwargs: Any) -> ClusterClient:
        return nodes.async_cluster_client(self.host, self.port, self.settings(user), **kwargs)

    def node(self, host: str, port: int) -> nodes.Node:
        """The node at `host:port`, as the admin, replies decoded."""
        return nodes.Node.at(host, port, self.settings(acl.ADMIN_USER))
