"""An ordinary AWS Lambda handler, packaged as a Lambda container image (see Dockerfile)."""
import json
import os
import time

COLD = {"started": time.time(), "invocations": 0}


def handler(event, context):
    COLD["invocations"] += 1
    query = event.get("queryStringParameters") or {}
    if "sleep" in query:
        time.sleep(float(query["sleep"]))
    if "fail" in query:
        raise RuntimeError("failing on purpose")
    print(f"handled {context.aws_request_id}")
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({
            "function": context.function_name,
            "requestId": context.aws_request_id,
            "remainingMs": context.get_remaining_time_in_millis(),
            "region": os.environ.get("AWS_REGION"),
            "pid": os.getpid(),
            "invocations": COLD["invocations"],
            "path": event["rawPath"],
        }),
    }
