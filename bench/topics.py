"""A benchmark run's topics: PREFIX.transactions (PARTITIONS), PREFIX.labels
and PREFIX.transactions.dlq, created fresh with LogAppendTime (latency is
measured from the broker's append time), and deleted when the run is done
(a run pre-loads up to a million records; left behind, they fill the disk).

    python bench/topics.py create PREFIX PARTITIONS BROKERS
    python bench/topics.py delete PREFIX BROKERS
"""
import sys

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

verb, prefix = sys.argv[1], sys.argv[2]
names = [f"{prefix}.transactions", f"{prefix}.labels", f"{prefix}.transactions.dlq"]
if verb == "create":
    partitions, brokers = int(sys.argv[3]), sys.argv[4]
    config = {"message.timestamp.type": "LogAppendTime"}
    admin = AdminClient({"bootstrap.servers": brokers})  # must outlive the futures
    topics = [NewTopic(name, partitions if name.endswith(".transactions") else 1, 1, config=config)
              for name in names]
    for future in admin.create_topics(topics).values():
        future.result()
elif verb == "delete":
    admin = AdminClient({"bootstrap.servers": sys.argv[3]})
    for name, future in admin.delete_topics(names).items():
        try:
            future.result()
        except KafkaException as e:  # already gone is fine; say anything else
            if e.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                print(f"bench: cannot delete topic {name}: {e}", file=sys.stderr)
else:
    sys.exit(f"usage: {sys.argv[0]} create PREFIX PARTITIONS BROKERS | delete PREFIX BROKERS")
