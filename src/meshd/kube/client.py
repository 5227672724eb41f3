"""The one place meshd builds its Kubernetes API client: from a kubeconfig file when given,
otherwise from the in-cluster service account."""

from __future__ import annotations

import pathlib

from kubernetes_asyncio import client, config


async def new_api_client(kubeconfig: pathlib.Path | None) -> client.ApiClient:
    configuration = client.Configuration()
    if kubeconfig is not None:
        await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration=configuration)
