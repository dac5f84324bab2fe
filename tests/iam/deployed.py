"""What IAM decides with, read from the local AWS as deployed: each role's policies (inline and
attached, the template after the local deploy resolved it), trust policies, bucket policies, the
tags of Lambda functions, and the key a topic is encrypted with and its key policy. Read once per
name, when first needed.

A bucket policy comes from the deployed stack (``DeployedStack.bucket_policies``): the local S3
applies no conditional Deny, so the deploy keeps those statements there rather than in S3."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any
from urllib.parse import unquote

from .simulator import Policy

Client = Callable[[str], Any]


def _document(value: Any) -> Policy:
    """A policy document as IAM's API returns it: a dict, or URL-encoded JSON text."""
    if isinstance(value, dict):
        return value
    return dict(json.loads(unquote(str(value))))


def role_name(role_arn: str) -> str:
    return role_arn.rsplit("/", 1)[-1]


class DeployedAccount:
    """One account and region of the local AWS. ``client`` makes a boto3 client for a service."""

    def __init__(
        self,
        client: Client,
        account_id: str,
        region: str,
        bucket_policies: dict[str, Policy] | None = None,
        partition: str = "aws",
    ) -> None:
        self._client = client
        self._bucket_policies = bucket_policies or {}
        self.account_id = account_id
        self.region = region
        self.partition = partition
        # per instance: the account is read as it is now, once
        self.role_policies = cache(self._role_policies)
        self.trust_policy = cache(self._trust_policy)
        self.bucket_policy = cache(self._bucket_policy)
        self.function_tags = cache(self._function_tags)
        self.topic_key = cache(self._topic_key)
        self.key_policy = cache(self._key_policy)

    def arn(self, service: str, resource: str, *, region: bool = True, account: bool = True) -> str:
        return (
            f"arn:{self.partition}:{service}:{self.region if region else ''}:"
            f"{self.account_id if account else ''}:{resource}"
        )

    def role_arn(self, name: str) -> str:
        return str(self._client("iam").get_role(RoleName=name)["Role"]["Arn"])

    def _role_policies(self, role_arn: str) -> tuple[tuple[str, Policy], ...]:
        """Every identity policy of a role: its inline policies and the managed ones attached."""
        iam = self._client("iam")
        name = role_name(role_arn)
        policies: list[tuple[str, Policy]] = []
        for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            document = iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
            policies.append((policy_name, _document(document)))
        for attached in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
            policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
            version = iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])
            policies.append((attached["PolicyName"], _document(version["PolicyVersion"]["Document"])))
        return tuple(policies)

    def _trust_policy(self, role_arn: str) -> Policy:
        role = self._client("iam").get_role(RoleName=role_name(role_arn))["Role"]
        return _document(role["AssumeRolePolicyDocument"])

    def _bucket_policy(self, bucket: str) -> Policy | None:
        if bucket in self._bucket_policies:
            return self._bucket_policies[bucket]
        s3 = self._client("s3")
        try:
            return _document(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        except s3.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] == "NoSuchBucketPolicy":
                return None
            raise

    def _function_tags(self, function_arn: str) -> tuple[tuple[str, str], ...]:
        lam = self._client("lambda")
        try:
            tags = lam.list_tags(Resource=function_arn)["Tags"]
        except lam.exceptions.ResourceNotFoundException:
            return ()
        return tuple(sorted(tags.items()))

    def _topic_key(self, topic_arn: str) -> str | None:
        """The ARN of the customer managed key a topic is encrypted with (None: none, or AWS's own)."""
        attributes = self._client("sns").get_topic_attributes(TopicArn=topic_arn)["Attributes"]
        key = attributes.get("KmsMasterKeyId")
        if not key or key.startswith("alias/aws/"):
            return None
        return str(self._client("kms").describe_key(KeyId=key)["KeyMetadata"]["Arn"])

    def _key_policy(self, key_arn: str) -> Policy:
        return _document(self._client("kms").get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"])
