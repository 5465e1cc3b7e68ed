"""The IAM of a synthesized template, offline: every role's and resource policy's statements, with
their resources resolved to the ARNs AWS would give them, evaluated by the emulator's own policy
evaluator (`ministack.core.iam_evaluator`, the one `local up` enforces with).

Used by the stage-parity test (cloud vs local statements), the refused-call tests and the check of
the AWS calls recorded during the e2e suite (`tests/aws_calls.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ministack.core.iam_evaluator import EvalContext, evaluate, parse_policy_document

ACCOUNT = "000000000000"
REGION = "us-east-1"
#: The sender identity's name in a rendered template (`Ref` of the SES identity).
SES_SENDER = "reports@example.com"

#: How `Fn::GetAtt [X, Arn]` resolves, by resource type (`{id}` is the logical id).
_ARN_OF = {
    "AWS::DynamoDB::Table": "arn:aws:dynamodb:{region}:{account}:table/{id}",
    "AWS::SQS::Queue": "arn:aws:sqs:{region}:{account}:{id}",
    "AWS::S3::Bucket": "arn:aws:s3:::{lower}",
    "AWS::Lambda::Function": "arn:aws:lambda:{region}:{account}:function:{id}",
    "AWS::Logs::LogGroup": "arn:aws:logs:{region}:{account}:log-group:{id}:*",
    "AWS::IAM::Role": "arn:aws:iam::{account}:role/{id}",
    "AWS::SNS::Topic": "arn:aws:sns:{region}:{account}:{id}",
    "AWS::KMS::Key": "arn:aws:kms:{region}:{account}:key/{id}",
}
#: How `Ref` resolves where it is not the name: a secret's is its ARN (random suffix of six).
_REF_OF = {
    "AWS::SecretsManager::Secret": "arn:aws:secretsmanager:{region}:{account}:secret:{id}-AbCdEf",
    "AWS::SES::EmailIdentity": SES_SENDER,
    "AWS::SQS::Queue": "https://sqs.{region}.amazonaws.com/{account}/{id}",
    "AWS::S3::Bucket": "{lower}",
}
_PSEUDO = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::URLSuffix": "amazonaws.com"}


@dataclass(frozen=True)
class Template:
    """One synthesized stack template."""

    body: dict[str, Any]

    @property
    def resources(self) -> dict[str, Any]:
        return dict(self.body["Resources"])

    def resolve(self, value: Any) -> Any:
        """A CloudFormation value with its intrinsics resolved to concrete names and ARNs."""
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "Ref" in value:
            ref = value["Ref"]
            if ref in _PSEUDO:
                return _PSEUDO[ref]
            kind = self.resources.get(ref, {}).get("Type", "")
            return _REF_OF.get(kind, "{id}").format(region=REGION, account=ACCOUNT, id=ref, lower=ref.lower())
        if "Fn::GetAtt" in value:
            ref, attr = value["Fn::GetAtt"]
            kind = self.resources[ref]["Type"]
            if attr == "Arn" and kind in _ARN_OF:
                return _ARN_OF[kind].format(region=REGION, account=ACCOUNT, id=ref, lower=ref.lower())
            return f"<{ref}.{attr}>"
        if "Fn::Join" in value:
            separator, parts = value["Fn::Join"]
            return separator.join(str(self.resolve(p)) for p in parts)
        if "Fn::Select" in value:
            index, items = value["Fn::Select"]
            return self.resolve(items)[index]
        if "Fn::Split" in value:
            separator, text = value["Fn::Split"]
            return str(self.resolve(text)).split(separator)
        return {k: self.resolve(v) for k, v in value.items()}

    def role_policies(self, role: str) -> list[dict[str, Any]]:
        """The policy documents of the role `role` (inline and `AWS::IAM::Policy`), resolved."""
        docs = [p["PolicyDocument"] for p in self.resources[role]["Properties"].get("Policies", [])]
        for resource in self.resources.values():
            if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role} in resource["Properties"].get("Roles", []):
                docs.append(resource["Properties"]["PolicyDocument"])
        return [self.resolve(d) for d in docs]

    def roles(self) -> list[str]:
        return sorted(k for k, v in self.resources.items() if v["Type"] == "AWS::IAM::Role")

    def allows(
        self, role: str, action: str, resource: str, *, leading_keys: list[str] | None = None, **context: Any
    ) -> bool:
        """Whether the role's identity policies allow `action` on `resource` (ARN), as the emulator decides.

        `leading_keys`: the partition keys a DynamoDB request touches (`dynamodb:LeadingKeys`, which AWS sets
        on every request that names keys; `microprocess.local.leading_keys` computes it locally)."""
        if leading_keys is not None:
            context["dynamodb:LeadingKeys"] = leading_keys
        # condition keys are compared lowercased (as `iam_evaluator.enforce` hands them over)
        context = {key.lower(): value for key, value in context.items()}
        policies = [parse_policy_document(json.dumps(doc)) for doc in self.role_policies(role)]
        ctx = EvalContext(
            principal_arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/check",
            principal_type="AssumedRole",
            principal_account=ACCOUNT,
            action=action,
            resource_arn=resource,
            region=REGION,
            source_ip="127.0.0.1",
            secure_transport=True,
            service_context=context,
        )
        return evaluate(ctx, policies).decision == "Allow"

    def arn(self, logical_id: str) -> str:
        """The ARN of a resource of the template, as `allows` expects it."""
        return str(self.resolve({"Fn::GetAtt": [logical_id, "Arn"]}))

    def replacing(self, role: str, old: str, new: str) -> Template:
        """This template with the text `old` replaced by `new` in `role`'s policies (e.g. an older resource)."""
        body = json.loads(json.dumps(self.body))
        replaced = 0
        for resource in body["Resources"].values():
            if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role} in resource["Properties"].get("Roles", []):
                text = json.dumps(resource["Properties"]["PolicyDocument"])
                replaced += text.count(old)
                resource["Properties"]["PolicyDocument"] = json.loads(text.replace(old, new))
        assert replaced, f"{old!r} is in no policy of {role}"
        return Template(body)

    def without_action(self, role: str, action: str) -> Template:
        """This template with `action` taken out of every statement of `role`'s policies (the role as it
        was before the action was granted)."""
        body = json.loads(json.dumps(self.body))
        for resource in body["Resources"].values():
            if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role} in resource["Properties"].get("Roles", []):
                for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
                    actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                    statement["Action"] = [a for a in actions if a != action] or ["none:Nothing"]
        return Template(body)


def statement_set(docs: list[dict[str, Any]]) -> set[str]:
    """Policy documents as a set of one-action-one-resource statements (JSON text), to compare stages."""
    out: set[str] = set()
    for doc in docs:
        for statement in doc.get("Statement", []):
            actions = statement.get("Action", [])
            resources = statement.get("Resource", ["*"])
            for action in actions if isinstance(actions, list) else [actions]:
                for resource in resources if isinstance(resources, list) else [resources]:
                    out.add(
                        json.dumps(
                            {
                                "Effect": statement["Effect"],
                                "Action": action,
                                "Resource": resource,
                                "Principal": statement.get("Principal"),
                                "Condition": statement.get("Condition"),
                            },
                            sort_keys=True,
                        )
                    )
    return out
