"""Talking to AWS: clients, one call function, and AWS's errors turned into ours with a hint.

Every AWS call goes through :func:`call` (or the :func:`aws_errors` block), which turns
botocore's exceptions into an :class:`~sshcluster.errors.EC2Error` carrying AWS's error
code and a hint on what to do, so neither the API nor the CLI ever shows a botocore
traceback for AWS's answer. The same :func:`call` makes the dry runs: with
``dry_run=True`` it passes ``DryRun=True`` and returns None when AWS answers that the
real call would have succeeded.

boto3 and the heavier parts of botocore are imported where they are used, so that
``sshcluster --help`` does not pay for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import botocore.exceptions

from sshcluster.errors import EC2Error

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_ec2.type_defs import FilterTypeDef

T = TypeVar("T")


#: botocore's retries: the "standard" mode (exponential backoff with jitter, and it also
#: retries throttling and transient errors the "legacy" default does not) with about 10
#: attempts, so that a longer spell of RequestLimitExceeded does not end ``up``.
RETRY_MODE: Final = "standard"
RETRY_ATTEMPTS: Final = 10


def make_client(region: str, *, endpoint_url: str | None = None) -> EC2Client:
    """An EC2 client for ``region``. boto3 also honours ``AWS_ENDPOINT_URL(_EC2)``."""
    return cast("EC2Client", make_service_client("ec2", region, endpoint_url=endpoint_url))


def make_service_client(service: str, region: str, *, endpoint_url: str | None = None) -> Any:
    """A boto3 client of ``service`` (``ec2``, ``ssm``, ``service-quotas``) for
    ``region``, with botocore's retries as :data:`RETRY_MODE` says."""
    import boto3
    from botocore.config import Config

    factory: Callable[..., Any] = boto3.client  # one service named at run time
    name = "EC2" if service == "ec2" else service
    with aws_errors(f"creating the {name} client"):  # a region botocore refuses
        return factory(service, region_name=region, endpoint_url=endpoint_url,
                       config=Config(retries={"mode": RETRY_MODE,
                                              "max_attempts": RETRY_ATTEMPTS}))


HINTS: dict[str, str] = {
    "AuthFailure": "AWS did not accept the credentials; check AWS_PROFILE or "
                   "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and the clock of this machine)",
    "UnauthorizedOperation": "your IAM identity may not call this; ask for the ec2 "
                             "permission named in the message (aws sts "
                             "decode-authorization-message explains the encoded part)",
    "InstanceLimitExceeded": "an account quota is reached; terminate other instances, ask "
                             "for more in Service Quotas, or start fewer/smaller instances",
    "VcpuLimitExceeded": "the vCPU quota of this instance family is reached; ask for more "
                         "in Service Quotas (EC2 > Running On-Demand/Spot instances) or "
                         "start fewer or smaller instances",
    "MaxSpotInstanceCountExceeded": "the spot quota is reached; ask for more in Service "
                                    "Quotas or use 'spot: false'",
    "InsufficientInstanceCapacity": "AWS has no capacity for this instance type here right "
                                    "now; try another type, another subnet's availability "
                                    "zone, or later",
    "SpotMaxPriceTooLow": "spot capacity is not available at that price; try on-demand "
                          "('spot: false') or another instance type",
    "InvalidKeyPair.NotFound": "key pairs are per region; check key_name, or leave it out "
                               "and sshcluster creates one for the cluster",
    "InvalidSubnetID.NotFound": "subnets are per region; check subnet_id",
    "InvalidGroup.NotFound": "security groups are per region and VPC; check "
                             "security_group_id",
    "InvalidInstanceType": "check instance_type; not every type exists in every region",
    "IdempotentParameterMismatch": "a launch with the same run id but other parameters "
                                   "exists; start with a new run id",
    "OptInRequired": "the image needs a subscription in AWS Marketplace, or the region is "
                     "not enabled for this account",
    "RequestLimitExceeded": "AWS is throttling requests; wait a minute and retry",
    "DependencyViolation": "something still uses it (instances may still be shutting "
                           "down); run 'sshcluster ec2 down' again in a minute",
    "VPCIdNotSpecified": "this region has no default VPC; set subnet_id in the spec",
    "Unsupported": "the instance type is not offered in that availability zone; sshcluster "
                   "tries the other subnets it may use, so set subnet_id to subnets in zones "
                   "where the type is offered (aws ec2 describe-instance-type-offerings "
                   "--location-type availability-zone --filters Name=instance-type,"
                   "Values=TYPE) or choose another type",
    "InsufficientFreeAddressesInSubnet": "the subnet has no free IP addresses left; "
                                         "sshcluster tries the other subnets it may use, "
                                         "so set subnet_id to subnets with room",
    "PendingVerification": "AWS is still verifying this account for the region (new accounts "
                           "can take up to 4 hours); try again later, or ask AWS Support",
    "AuthFailure.ServiceLinkedRoleCreationNotPermitted":
        "the first spot launch of an account creates the service-linked role "
        "AWSServiceRoleForEC2Spot, which your identity may not do; ask an administrator to "
        "run 'aws iam create-service-linked-role --aws-service-name spot.amazonaws.com' "
        "once, or use 'spot: false'",
    "ParameterNotFound": "AWS has no public parameter for this image name in this region "
                         "or for the instance type's architecture; use an AMI id of the "
                         "region as 'image'",
    "SSOToken": "your AWS SSO session has expired or was never started: run 'aws sso login' "
                "(with --profile if you use AWS_PROFILE), then try again",
}

#: Why an instance went from pending to terminated (its ``StateReason`` code), and what to
#: do about it.
STATE_REASON_HINTS: dict[str, str] = {
    "Client.InternalError": "often an EBS encryption key (KMS) the caller may not use: "
                            "check the account's default EBS encryption key and that you "
                            "may use it (kms:CreateGrant, kms:Decrypt), or the image's "
                            "snapshot key",
    "Client.VolumeLimitExceeded": "the EBS volume quota of the account is reached; ask for "
                                  "more in Service Quotas or use a smaller disk_gb",
    "Client.InvalidSnapshot.NotFound": "the image's snapshot is gone; choose another image",
    "Server.InsufficientInstanceCapacity": HINTS["InsufficientInstanceCapacity"],
    "Server.InternalError": "an AWS-side failure at launch; try again, or another zone",
    "Server.SpotInstanceTermination": "AWS took the spot capacity back; try again, or use "
                                      "'spot: false'",
}


def hint_for(code: str, message: str = "") -> str | None:
    """What to do about AWS error ``code`` (with AWS's ``message``), if we know."""
    if code == "Unsupported" and "availability zone" not in message.lower():
        return None  # not the zone: a configuration AWS does not support, as it says
    if code.startswith("InvalidAMIID"):
        return ("AMI ids are per region; look up the image id for this region "
                "(e.g. with 'aws ec2 describe-images') and set 'image'")
    if code in ("UnrecognizedClientException", "InvalidClientTokenId",
                "SignatureDoesNotMatch", "ExpiredToken", "RequestExpired"):
        return HINTS["AuthFailure"]
    return HINTS.get(code)


def is_boto_error(exc: BaseException) -> bool:
    """True for what botocore raises: AWS's error answers, its own errors, and an answer
    it cannot parse (ResponseParserError is not a BotoCoreError)."""
    from botocore.parsers import ResponseParserError

    return isinstance(exc, (botocore.exceptions.ClientError,
                            botocore.exceptions.BotoCoreError, ResponseParserError))


def error_code(exc: BaseException) -> str | None:
    """AWS's error code of a botocore ClientError, else None."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", "Unknown"))
    return None


def aws_error(exc: BaseException, operation: str) -> EC2Error:
    """Turn a botocore exception from ``operation`` into an EC2Error with a hint."""
    from botocore.parsers import ResponseParserError

    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "Unknown")
        message = err.get("Message", str(exc))
        return EC2Error(f"{operation}: {code}: {message}", code=code, operation=operation,
                        hint=hint_for(code, message))
    if isinstance(exc, (botocore.exceptions.SSOTokenLoadError,
                        botocore.exceptions.UnauthorizedSSOTokenError,
                        botocore.exceptions.TokenRetrievalError,
                        botocore.exceptions.SSOError)):
        return EC2Error(f"{operation}: {exc}", code="SSOToken", operation=operation,
                        hint=HINTS["SSOToken"])
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return EC2Error(f"{operation}: no AWS credentials found", code="NoCredentials",
                        operation=operation,
                        hint="run 'aws configure', set AWS_PROFILE, or set "
                             "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, botocore.exceptions.WaiterError):
        last = exc.last_response or {}
        if "Error" in last:
            code = last["Error"].get("Code", "Unknown")
            return EC2Error(f"{operation}: {code}: {last['Error'].get('Message', '')}",
                            code=code, operation=operation, hint=hint_for(code))
        return EC2Error(f"{operation}: {exc}", operation=operation)
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return EC2Error(f"{operation}: cannot reach the EC2 endpoint: {exc}",
                        operation=operation,
                        hint="check the network and the region (and AWS_ENDPOINT_URL)")
    if isinstance(exc, ResponseParserError):
        # Not from EC2: e.g. the HTML error page of a proxy, or of an endpoint that does
        # not know the region (the page itself, in the exception, says no more).
        return EC2Error(f"{operation}: the endpoint's answer is not an EC2 answer (not "
                        "valid XML; an HTML error page?)", operation=operation,
                        hint="check the region (does it exist, is it enabled for this "
                             "account?) and AWS_ENDPOINT_URL")
    return EC2Error(f"{operation}: {exc}", operation=operation)


@contextmanager
def aws_errors(operation: str) -> Iterator[None]:
    """Turn botocore failures inside the block into EC2Error."""
    try:
        yield
    except Exception as e:
        if is_boto_error(e):
            raise aws_error(e, operation) from e
        raise


def call(method: Callable[..., T], operation: str, /, *, dry_run: bool = False,
         **params: Any) -> T | None:
    """``method(**params)`` with AWS's errors as EC2Error; the answer, or None for a dry run.

    ``dry_run``: the same call with ``DryRun=True``. AWS answers ``DryRunOperation`` when
    the real call would have been allowed (permissions and parameters; AWS does not check
    quotas or capacity in a dry run); any other answer is raised as for the real call.
    """
    if dry_run:
        params["DryRun"] = True
    try:
        answer = method(**params)
    except botocore.exceptions.ClientError as e:
        if dry_run and error_code(e) == "DryRunOperation":
            return None
        raise aws_error(e, operation) from e
    except Exception as e:
        if is_boto_error(e):
            raise aws_error(e, operation) from e
        raise
    if dry_run:
        raise EC2Error(f"{operation}: the dry run was not refused nor confirmed",
                       operation=operation)
    return answer


def retry(call: Callable[[], T], operation: str, *, codes: tuple[str, ...],
          deadline: float, poll: float, max_pause: float = 15.0) -> T:
    """``call()``, again with backoff while AWS answers one of ``codes`` (a NotFound
    right after creation, a DependencyViolation while interfaces are released), until
    ``deadline`` (``time.monotonic()``); then the last answer is raised as EC2Error."""
    pause = max(0.05, poll)
    while True:
        try:
            with aws_errors(operation):
                return call()
        except EC2Error as e:
            if e.code not in codes or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, max_pause)


def make_filters(**tags: str | Sequence[str]) -> list[FilterTypeDef]:
    """EC2 ``Filters`` from keyword arguments (a value or a list of values each)."""
    out: list[FilterTypeDef] = []
    for key, value in tags.items():
        values = [value] if isinstance(value, str) else list(value)
        out.append({"Name": key, "Values": values})
    return out


def region_of(client: EC2Client) -> str:
    """The region ``client`` talks to."""
    return str(client.meta.region_name)


__all__ = [
    "HINTS",
    "RETRY_ATTEMPTS",
    "RETRY_MODE",
    "STATE_REASON_HINTS",
    "aws_error",
    "aws_errors",
    "call",
    "error_code",
    "hint_for",
    "is_boto_error",
    "make_client",
    "make_filters",
    "make_service_client",
    "region_of",
    "retry",
]
