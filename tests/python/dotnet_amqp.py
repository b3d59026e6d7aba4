"""MassTransit and NServiceBus messages over RabbitMQ, as the .NET frameworks write and read
them, with pika.

    dotnet_amqp.py produce <url> <queue> <masstransit|nservicebus> <id>
        Publish one message straight into <queue>, shaped as the framework writes it.
    dotnet_amqp.py consume <url> <queue> <count>
        Take <count> messages from <queue>, check each against the documentation of its
        format (told apart by content type and headers) and print one JSON line per message
        with the fields read. Exits non-zero, naming the field, when a message breaks it.

MassTransit: https://masstransit.io/documentation/configuration/serialization (the envelope),
https://masstransit.io/documentation/concepts/messages#message-names (message URNs).
NServiceBus: https://docs.particular.net/nservicebus/messaging/headers.
"""

import json
import re
import sys
import uuid

import pika

MT_CONTENT_TYPE = "application/vnd.masstransit+json"
CONVERSATION = "5f1c4a4e-0d4b-4b8e-9a43-7c1c2f3a9b10"
CORRELATION = "0b8f3a52-6a55-4a0e-8f7e-2f8d9c1e4d21"
SENT = "2026-01-02T03:04:05.1234567Z"
NSB_SENT = "2026-01-02 03:04:05:123456 Z"


def channel(url):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    return connection, connection.channel()


def produce(url, queue, kind, message_id):
    if kind == "masstransit":
        # As MassTransit's SystemTextJsonMessageSerializer writes it: camelCase fields.
        body = {
            "messageId": message_id,
            "requestId": None,
            "correlationId": CORRELATION,
            "conversationId": CONVERSATION,
            "initiatorId": None,
            "sourceAddress": "rabbitmq://localhost/shop_sales",
            "destinationAddress": "rabbitmq://localhost/" + queue,
            "messageType": [
                "urn:message:Shop.Contracts:OrderPlaced",
                "urn:message:Shop.Contracts:IOrderEvent",
            ],
            "message": {"order": "py-mt", "amount": 42},
            "sentTime": SENT,
            "headers": {"tenant": "acme"},
            "host": {
                "machineName": "py",
                "processName": "python3",
                "processId": 1,
                "assembly": "Shop",
                "frameworkVersion": "8.0",
                "massTransitVersion": "8.2.0",
                "operatingSystemVersion": "Unix",
            },
        }
        properties = pika.BasicProperties(
            content_type=MT_CONTENT_TYPE,
            message_id=message_id,
            headers={"Content-Type": MT_CONTENT_TYPE},
            delivery_mode=2,
        )
        data = json.dumps(body).encode()
    else:
        properties = pika.BasicProperties(
            content_type="application/json",
            message_id=message_id,
            correlation_id=CORRELATION,
            headers={
                "NServiceBus.MessageId": message_id,
                "NServiceBus.EnclosedMessageTypes": "Shop.Contracts.OrderPlaced, Shop.Contracts, Version=1.0.0.0, Culture=neutral, PublicKeyToken=null",
                "NServiceBus.ConversationId": CONVERSATION,
                "NServiceBus.CorrelationId": CORRELATION,
                "NServiceBus.MessageIntent": "Publish",
                "NServiceBus.ReplyToAddress": "Shop.Sales",
                "NServiceBus.OriginatingEndpoint": "Shop.Sales",
                "NServiceBus.TimeSent": NSB_SENT,
                "NServiceBus.ContentType": "application/json",
            },
            delivery_mode=2,
        )
        data = json.dumps({"order": "py-nsb", "amount": 42}).encode()
    connection, ch = channel(url)
    ch.basic_publish(exchange="", routing_key=queue, body=data, properties=properties)
    connection.close()


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def is_guid(text):
    try:
        uuid.UUID(str(text))
        return True
    except ValueError:
        return False


def check_masstransit(properties, body):
    envelope = json.loads(body)
    for field in ("messageId", "sourceAddress", "destinationAddress", "messageType", "message", "sentTime"):
        if field not in envelope:
            fail(f"MassTransit envelope without `{field}`: {envelope}")
    for field in ("messageId", "correlationId", "conversationId"):
        if field in envelope and not is_guid(envelope[field]):
            fail(f"MassTransit reads `{field}` as a GUID: {envelope[field]!r}")
    types = envelope["messageType"]
    if not isinstance(types, list) or not types:
        fail(f"`messageType` is a non-empty array: {types!r}")
    for urn in types:
        if not re.fullmatch(r"urn:message:[^:]+(:[^:]+)?", urn):
            fail(f"`messageType` entries are message URNs: {urn!r}")
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?(Z|\+00:00)", envelope["sentTime"]):
        fail(f"`sentTime` is ISO 8601 UTC with at most 7 fraction digits: {envelope['sentTime']!r}")
    if not isinstance(envelope.get("headers", {}), dict) or not isinstance(envelope.get("host", {}), dict):
        fail("`headers` and `host` are objects")
    return {
        "format": "masstransit",
        "messageId": envelope["messageId"],
        "correlationId": envelope.get("correlationId"),
        "conversationId": envelope.get("conversationId"),
        "messageType": types,
        "message": envelope["message"],
        "destinationAddress": envelope["destinationAddress"],
        "sourceAddress": envelope["sourceAddress"],
        "headers": envelope.get("headers", {}),
    }


def check_nservicebus(properties, body):
    h = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (properties.headers or {}).items()}
    for name in ("NServiceBus.MessageId", "NServiceBus.EnclosedMessageTypes", "NServiceBus.MessageIntent",
                 "NServiceBus.TimeSent", "NServiceBus.ContentType", "NServiceBus.ConversationId",
                 "NServiceBus.CorrelationId"):
        if not h.get(name):
            fail(f"NServiceBus message without `{name}`: {h}")
    if h["NServiceBus.MessageIntent"] not in ("Send", "Publish", "Reply"):
        fail(f"`NServiceBus.MessageIntent` is Send, Publish or Reply: {h['NServiceBus.MessageIntent']!r}")
    if not re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d:\d{6} Z", h["NServiceBus.TimeSent"]):
        fail(f"`NServiceBus.TimeSent` is `yyyy-MM-dd HH:mm:ss:ffffff Z`: {h['NServiceBus.TimeSent']!r}")
    for name in ("NServiceBus.ConversationId", "NServiceBus.CorrelationId"):
        if not is_guid(h[name]):
            fail(f"NServiceBus reads `{name}` as a GUID: {h[name]!r}")
    message = json.loads(body)
    return {
        "format": "nservicebus",
        "headers": {k: v for k, v in h.items() if k.startswith("NServiceBus.")},
        "message": message,
        "contentType": properties.content_type,
    }


def consume(url, queue, count):
    connection, ch = channel(url)
    taken = 0
    for _ in range(600):
        method, properties, body = ch.basic_get(queue=queue, auto_ack=True)
        if method is None:
            connection.sleep(0.1)
            continue
        if (properties.content_type or "").startswith(MT_CONTENT_TYPE):
            line = check_masstransit(properties, body)
        elif any(k.startswith("NServiceBus.") for k in (properties.headers or {})):
            line = check_nservicebus(properties, body)
        else:
            fail(f"neither MassTransit nor NServiceBus: {properties}")
        print(json.dumps(line), flush=True)
        taken += 1
        if taken == count:
            break
    connection.close()
    if taken < count:
        fail(f"only {taken} of {count} messages arrived")


if __name__ == "__main__":
    if sys.argv[1] == "produce":
        produce(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        consume(sys.argv[2], sys.argv[3], int(sys.argv[4]))
