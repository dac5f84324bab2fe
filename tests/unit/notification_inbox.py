"""A notification topic with an SQS queue subscribed (raw delivery), for tests on moto."""

import boto3


def create_topic_with_inbox(name: str = "notifications") -> tuple[str, str]:
    """(topic ARN, queue URL): every message published to the topic lands in the queue as sent."""
    topic = boto3.client("sns").create_topic(Name=name)["TopicArn"]
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName=f"{name}-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("sns").subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"}
    )
    return topic, queue_url
