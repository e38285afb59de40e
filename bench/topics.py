"""Create a benchmark run's fresh topics: PREFIX.transactions (PARTITIONS),
PREFIX.labels and PREFIX.transactions.dlq, with LogAppendTime (latency is
measured from the broker's append time).

    python bench/topics.py PREFIX PARTITIONS BROKERS
"""
import sys

from confluent_kafka.admin import AdminClient, NewTopic

prefix, partitions, brokers = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = {"message.timestamp.type": "LogAppendTime"}
topics = [NewTopic(f"{prefix}.transactions", partitions, 1, config=config),
          NewTopic(f"{prefix}.labels", 1, 1, config=config),
          NewTopic(f"{prefix}.transactions.dlq", 1, 1, config=config)]
admin = AdminClient({"bootstrap.servers": brokers})  # must outlive the futures
for future in admin.create_topics(topics).values():
    future.result()
