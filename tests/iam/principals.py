"""A role session as IAM sees it: the principal ARN of its requests and the context keys it brings."""

from __future__ import annotations

from dataclasses import dataclass

from .deployed import DeployedAccount, role_name
from .simulator import Context, IamRequest, Policy


@dataclass(frozen=True)
class RoleSession:
    """A session of ``role_arn`` (a Lambda function's is named after the function), with its tags."""

    role_arn: str
    session_name: str
    account_id: str
    session_tags: tuple[tuple[str, str], ...] = ()

    @property
    def arn(self) -> str:
        return f"arn:aws:sts::{self.account_id}:assumed-role/{role_name(self.role_arn)}/{self.session_name}"

    def context(self) -> Context:
        context: Context = {
            "aws:PrincipalArn": self.role_arn,
            "aws:PrincipalAccount": self.account_id,
            "aws:PrincipalType": "AssumedRole",
            "aws:SecureTransport": "true",
        }
        for key, value in self.session_tags:
            context[f"aws:PrincipalTag/{key}"] = value
        return context

    def request(
        self,
        account: DeployedAccount,
        action: str,
        resource: str,
        context: Context | None = None,
        resource_policy: Policy | None = None,
        context_as_given: bool = False,
    ) -> IamRequest:
        """This session's request, with the role's policies as deployed."""
        return IamRequest.of(
            principal=self.arn,
            action=action,
            resource=resource,
            account_id=self.account_id,
            identity_policies=account.role_policies(self.role_arn),
            context={**self.context(), **(context or {})},
            resource_policy=resource_policy,
            context_as_given=context_as_given,
        )
