"""CloudEvents over RabbitMQ as a client the bus did not write sees them: the CloudEvents
Python SDK's AMQP binding (`cloudevents.core.bindings.amqp`) with pika.

    ce_amqp.py produce <url> <queue> <binary|structured> <id> <type> <time>
        Publish one CloudEvent, made and encoded by the SDK, straight into <queue>.
    ce_amqp.py consume <url> <queue> <count>
        Take <count> messages from <queue>, parse each with the SDK (it detects the mode by
        the content type) and print one JSON line per message: its attributes, its data, the
        AMQP content type and the names of its application properties.

Exits non-zero with the SDK's error when it refuses a message.
"""

import json
import sys
import time
from datetime import datetime

import pika
from cloudevents.core.bindings import amqp
from cloudevents.core.v1.event import CloudEvent


def channel(url):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    return connection, connection.channel()


def produce(url, queue, mode, event_id, event_type, at):
    event = CloudEvent(
        attributes={
            "specversion": "1.0",
            "id": event_id,
            "source": "urn:python:shop",
            "type": event_type,
            "subject": "order-7",
            "time": datetime.fromisoformat(at.replace("Z", "+00:00")),
            "datacontenttype": "application/json",
            "tenant": "acme",
        },
        data={"order": "py-" + mode, "amount": 42},
    )
    if mode == "binary":
        message = amqp.to_binary_event(event)
    else:
        message = amqp.to_structured_event(event)
    properties = pika.BasicProperties(
        content_type=message.properties.get("content-type"),
        headers=dict(message.application_properties) or None,
        delivery_mode=2,
    )
    connection, ch = channel(url)
    ch.basic_publish(
        exchange="",
        routing_key=queue,
        body=message.application_data,
        properties=properties,
    )
    connection.close()


def text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def consume(url, queue, count):
    connection, ch = channel(url)
    deadline = time.monotonic() + 20
    taken = 0
    while taken < count:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            if time.monotonic() > deadline:
                sys.exit(f"only {taken} of {count} messages arrived in {queue}")
            time.sleep(0.1)
            continue
        taken += 1
        headers = {k: text(v) for k, v in (props.headers or {}).items()}
        message = amqp.AMQPMessage(
            properties={"content-type": props.content_type} if props.content_type else {},
            application_properties=headers,
            application_data=body,
        )
        event = amqp.from_amqp_event(message)
        attributes = {
            k: (v.isoformat() if isinstance(v, datetime) else v)
            for k, v in event.get_attributes().items()
        }
        print(
            json.dumps(
                {
                    "attributes": attributes,
                    "data": event.get_data(),
                    "content_type": props.content_type,
                    "application_properties": sorted(headers),
                }
            ),
            flush=True,
        )
    connection.close()


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "produce":
        produce(*args)
    elif command == "consume":
        consume(args[0], args[1], int(args[2]))
    else:
        sys.exit(f"unknown command {command}")
