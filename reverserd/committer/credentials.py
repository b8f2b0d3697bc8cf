"""A GitProvider's Secret, read from the API server and turned into Git credentials.

Accepted keys (SPEC 2.1): ``username`` + ``password`` (a token works as password) for HTTP(S);
``ssh-privatekey`` (or Flux-style ``identity``) with optional ``ssh-password`` and
``known_hosts`` for SSH. Values never reach logs, status or metrics: problems are described by
key name only.
"""

from __future__ import annotations

import base64
import binascii

import aiohttp

from reverserd.committer.committer import ProviderProblem
from reverserd.config.model import Provider
from reverserd.git import GitCredentials
from reverserd.kube.client import KubeClient, KubeError
from reverserd.kube.paths import secret_path


async def load_credentials(client: KubeClient, provider: Provider) -> GitCredentials:
    skip = provider.insecure_skip_host_key
    if not provider.secret_name:
        return GitCredentials(insecure_skip_host_key_check=skip)
    path = secret_path(provider.namespace, provider.secret_name)
    try:
        secret = await client.get(path)
    except KubeError as error:
        if error.status == 404:
            raise ProviderProblem(
                "SecretNotFound",
                f"Secret {provider.secret_name!r} not found in namespace {provider.namespace!r}",
            ) from None
        raise ProviderProblem("ConnectionFailed", f"reading the Secret failed: {error}") from None
    except (aiohttp.ClientError, TimeoutError) as error:
        reason = str(error) or type(error).__name__
        raise ProviderProblem("ConnectionFailed", f"reading the Secret failed: {reason}") from None
    data: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(value).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ProviderProblem(
                "SecretMalformed", f"Secret {provider.secret_name!r} key {key!r} is not UTF-8 text"
            ) from None
    if ("username" in data) != ("password" in data):
        raise ProviderProblem(
            "SecretMalformed",
            f"Secret {provider.secret_name!r} needs both keys username and password",
        )
    if not ({"password", "ssh-privatekey", "identity"} & data.keys()):
        raise ProviderProblem(
            "SecretMalformed",
            f"Secret {provider.secret_name!r} has neither username/password nor ssh-privatekey",
        )
    return GitCredentials(
        username=data.get("username"),
        password=data.get("password"),
        ssh_private_key=data.get("ssh-privatekey") or data.get("identity"),
        ssh_passphrase=data.get("ssh-password"),
        known_hosts=data.get("known_hosts"),
        insecure_skip_host_key_check=skip,
    )
