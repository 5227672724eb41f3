"""Kubernetes RBAC for meshd's own HTTP paths: a SubjectAccessReview with non-resource attributes
(`get` on a path such as /debug/syncz), which a ClusterRole grants with `nonResourceURLs: ["/debug/*"]`."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client


async def may_get_path(api: Any, *, user: str, groups: list[str], path: str) -> tuple[bool, str]:
    """Whether `user` (with `groups`) may GET the non-resource `path`: (allowed, the API server's reason)."""
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user, groups=groups, non_resource_attributes=client.V1NonResourceAttributes(path=path, verb="get")
        )
    )
    result = await client.AuthorizationV1Api(api).create_subject_access_review(review)
    status = result.status
    allowed = bool(status is not None and status.allowed and not status.denied)
    return allowed, (status.reason or "") if status is not None else ""
