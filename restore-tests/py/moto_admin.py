"""Admin and attacker calls against a moto S3 server (an emulation of S3, used for Object Lock,
which Garage lacks). Prints JSON. Usage: moto_admin.py ENDPOINT COMMAND ARGS..."""
import email.utils
import json
import sys

import boto3
from botocore.config import Config


def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="tresor-test",
        aws_secret_access_key="tresor-test-secret",
        config=Config(retries={"max_attempts": 1}),
    )


def main():
    endpoint, command, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    s3 = client(endpoint)
    out = {}
    if command == "create-bucket":
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
    elif command == "hide":
        # hide BUCKET KEY: a plain delete (a delete marker in a versioned bucket)
        s3.delete_object(Bucket=args[0], Key=args[1])
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
