"""Admin and attacker calls against a moto S3 server (an emulation of S3, used for Object Lock,
which Garage lacks). Prints JSON. Usage: moto_admin.py ENDPOINT COMMAND ARGS..."""
import datetime
import email.utils
import json
import sys

import os
import urllib.request

import boto3
from botocore.config import Config


def client(endpoint, service="s3"):
    # Once IAM is enforced (iam-setup), calls are made with an IAM user's key from the environment.
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=os.environ.get("MOTO_KEY", "tresor-test"),
        aws_secret_access_key=os.environ.get("MOTO_SECRET", "tresor-test-secret"),
        config=Config(retries={"max_attempts": 1}),
    )


# moto 5.2.6 in server mode checks each call under "s3:" and its operation's name, where AWS
# checks its own action names (s3:ListBucket for ListObjectsV2, s3:GetObject for HeadObject,
# s3:DeleteObjectVersion for a DeleteObject with a version id...): each AWS action in the
# policies also grants (or denies) the operations AWS checks it for.
MOTO_ALIASES = {
    "s3:ListBucket": ["s3:ListObjectsV2", "s3:ListObjects", "s3:HeadBucket"],
    "s3:ListBucketVersions": ["s3:ListObjectVersions"],
    "s3:GetObject": ["s3:HeadObject"],
    "s3:GetBucketObjectLockConfiguration": ["s3:GetObjectLockConfiguration"],
}


def moto_names(policy):
    doc = json.loads(policy)
    for statement in doc["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        statement["Action"] = actions + [alias for a in actions for alias in MOTO_ALIASES.get(a, [])]
    return json.dumps(doc)


def iam_setup(endpoint, bucket, prefix, policies):
    """Users admin, agent and maintainer, the last two with the policies docs/policies gives
    them, and reader (it may list and read, nothing else). Then moto enforces IAM on every later
    call."""
    iam = client(endpoint, "iam")
    admin_policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    reader_actions = ["s3:ListBucket", "s3:ListBucketVersions", "s3:GetBucketVersioning",
                      "s3:GetBucketObjectLockConfiguration", "s3:GetObject"]
    reader_policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": reader_actions,
                                                             "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
    out = {}
    for user, policy in [("admin", json.dumps(admin_policy)), ("reader", json.dumps(reader_policy))] + [
        (name, open(os.path.join(policies, f"{name}.json")).read()) for name in ["agent", "maintainer"]
    ]:
        iam.create_user(UserName=user)
        policy = policy.replace("<bucket>", bucket).replace("<prefix>", prefix)
        policy = moto_names(policy.replace("<MODE>", "GOVERNANCE").replace("<days>", "1"))
        iam.put_user_policy(UserName=user, PolicyName=f"tresor-{user}", PolicyDocument=policy)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        out[user] = {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    # Not form-encoded: moto reads the raw body as the count of calls left unchecked.
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(request).read()
    return out


def main():
    endpoint, command, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    s3 = client(endpoint)
    out = {}
    if command == "iam-setup":
        # iam-setup BUCKET PREFIX POLICY_DIR
        out = iam_setup(endpoint, args[0], args[1], args[2])
    elif command == "create-bucket":
        # create-bucket NAME [locked] [MODE DAYS]
        name = args[0]
        locked = len(args) > 1 and args[1] == "locked"
        s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=locked)
        if len(args) > 3:
            s3.put_object_lock_configuration(
                Bucket=name,
                ObjectLockConfiguration={
                    "ObjectLockEnabled": "Enabled",
                    "Rule": {"DefaultRetention": {"Mode": args[2], "Days": int(args[3])}},
                },
            )
    elif command == "keys":
        # keys BUCKET PREFIX: current objects
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=args[0], Prefix=args[1])
        out["keys"] = [o["Key"] for p in pages for o in p.get("Contents", [])]
    elif command == "retention":
        head = s3.head_object(Bucket=args[0], Key=args[1])
        out["mode"] = head.get("ObjectLockMode")
        until = head.get("ObjectLockRetainUntilDate")
        date = email.utils.parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
        # Seconds of retention left by the server's own clock, and both times.
        out["left"] = (until - date).total_seconds() if until else None
        out["until"] = until.timestamp() if until else None
        out["now"] = date.timestamp()
    elif command == "versions":
        # versions BUCKET KEY [prefix]: how many versions and delete markers the key (or every
        # key under the prefix) has
        listed = s3.list_object_versions(Bucket=args[0], Prefix=args[1])
        whole = len(args) > 2 and args[2] == "prefix"
        same = lambda items: [v for v in items if whole or v["Key"] == args[1]]
        out["versions"] = len(same(listed.get("Versions", [])))
        out["markers"] = len(same(listed.get("DeleteMarkers", [])))
    elif command == "put":
        # put BUCKET KEY [SECONDS]: a new version, locked in governance mode for SECONDS if given
        extra = {}
        if len(args) > 2:
            until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=int(args[2]))
            extra = {"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": until}
        s3.put_object(Bucket=args[0], Key=args[1], Body=b"rewritten", ChecksumAlgorithm="SHA256", **extra)
    elif command == "hide":
        # hide BUCKET KEY: a plain delete (a delete marker in a versioned bucket), or its refusal
        try:
            s3.delete_object(Bucket=args[0], Key=args[1])
            out["refused"] = None
        except s3.exceptions.ClientError as e:
            out["refused"] = e.response["Error"]["Code"]
    elif command == "replace":
        # replace BUCKET KEY: a new version with other content
        s3.put_object(Bucket=args[0], Key=args[1], Body=b"ransomware was here", ChecksumAlgorithm="SHA256")
    elif command == "destroy":
        # destroy BUCKET KEY: delete every version by id; reports each refusal
        versions = s3.list_object_versions(Bucket=args[0], Prefix=args[1])
        out["refused"], out["deleted"] = [], []
        for v in versions.get("Versions", []):
            if v["Key"] != args[1]:
                continue
            try:
                s3.delete_object(Bucket=args[0], Key=args[1], VersionId=v["VersionId"])
                out["deleted"].append(v["VersionId"])
            except s3.exceptions.ClientError as e:
                out["refused"].append(e.response["Error"]["Code"])
    else:
        sys.exit(f"unknown command {command}")
    print(json.dumps(out))


main()
