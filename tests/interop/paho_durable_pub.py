"""paho-mqtt publishing through broker restarts, for tests/tests/broker_durable_kill.rs.

`python paho_durable_pub.py HOST PORT CLIENT_ID TOPIC MAX EVERY_MS WINDOW`

Connects at MQTT 3.1.1 with clean_session=False and a fixed client id, so that after a
reconnect (paho's own loop retries every 50-500 ms) paho resends what was in flight with the
same message ids. Publishes payloads "0", "1", ... to TOPIC, QoS 2 when i % 2 == 0 and QoS 1
otherwise, one every EVERY_MS milliseconds, never more than WINDOW unacknowledged at once,
until MAX messages or until a line arrives on stdin (or stdin closes). Then it waits up to 60 s
for the outstanding acknowledgments and exits.

Prints, one per line and flushed:
  `pub MID I`  message I was handed to paho with message id MID
  `ack MID`    on_publish: the PUBACK (QoS 1) or PUBCOMP (QoS 2) of MID arrived
  `up SESSION_PRESENT` / `down` on connect and disconnect
  `republished MID`  paho sent the QoS 2 PUBLISH of MID again after its PUBREL, which
                MQTT 3.1.1 section 4.3.3 forbids ("MUST NOT re-send the PUBLISH once it has
                sent the corresponding PUBREL"); seen in paho's own log, so that the test
                can tell a duplicate paho caused from one the broker caused. (paho 2.1.0 does
                this after a reconnect attempt that failed before its CONNACK, e.g. refused
                while the broker was down: that attempt turned the message's state from
                "wait for PUBCOMP" into "resend PUBREL", and the next one turns that into
                "publish", DUP clear.)
  `done PUBLISHED ACKED LEFT`

With PAHO_LOG=FILE set, paho's own log (every packet sent and received) goes to FILE.
"""
import os
import re
import sys
import threading
import time

import paho.mqtt.client as mqtt

host, port, cid, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
most, every, window = int(sys.argv[5]), int(sys.argv[6]) / 1000.0, int(sys.argv[7])

out_lock = threading.Lock()
state = threading.Condition()
pending = set()  # published, not yet acknowledged
early = set()  # acknowledged before the main thread recorded it as published
acked = 0
stop = threading.Event()


def say(line):
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def on_publish(_c, _u, mid, _reason, _props):
    global acked
    say(f"ack {mid}")
    with state:
        if mid in pending:
            pending.remove(mid)
        else:
            early.add(mid)
        acked += 1
        state.notify_all()


def on_connect(_c, _u, flags, reason, _props):
    say(f"up {int(flags.session_present)} {reason}")


def on_disconnect(_c, _u, _flags, reason, _props):
    say(f"down {reason}")


def watch_stdin():
    sys.stdin.readline()
    stop.set()


c = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2,
    client_id=cid,
    clean_session=False,
    protocol=mqtt.MQTTv311,
)
c.on_publish = on_publish
c.on_connect = on_connect
c.on_disconnect = on_disconnect
log = open(os.environ["PAHO_LOG"], "w", buffering=1) if os.environ.get("PAHO_LOG") else None
released = set()  # mids whose PUBREL paho sent
PUBLISH_RE = re.compile(r"^Sending PUBLISH \(d\d, q2, r\d, m(\d+)\)")
PUBREL_RE = re.compile(r"^Sending PUBREL \(Mid: (\d+)\)")


def on_log(_c, _u, _level, text):
    if log:
        log.write(f"{time.monotonic():.3f} {text}\n")
    m = PUBREL_RE.match(text)
    if m:
        released.add(int(m.group(1)))
        return
    m = PUBLISH_RE.match(text)
    if m and int(m.group(1)) in released:
        say(f"republished {m.group(1)}")


c.on_log = on_log
c.reconnect_delay_set(0.05, 0.5)
c.max_inflight_messages_set(window)
# Not `connect`: the broker may be down (killed) when this starts, and a refused first
# connect would raise; paho's loop retries an asynchronous one like any reconnect.
c.connect_async(host, port, keepalive=30)
c.loop_start()
threading.Thread(target=watch_stdin, daemon=True).start()

published = 0
next_at = time.monotonic()
while published < most and not stop.is_set():
    with state:
        while len(pending) >= window and not stop.is_set():
            state.wait(0.1)
    if stop.is_set():
        break
    delay = next_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    next_at = max(next_at + every, time.monotonic() - 1.0)
    qos = 2 if published % 2 == 0 else 1
    # Not under `state`: on_publish takes `state` while paho holds its own lock, which
    # publish() takes too. The ack may therefore come before the mid is recorded here.
    info = c.publish(topic, str(published), qos=qos)
    if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
        say(f"error {published} {info.rc}")
        break
    with state:
        if info.mid in early:
            early.remove(info.mid)
        else:
            pending.add(info.mid)
    say(f"pub {info.mid} {published}")
    published += 1

deadline = time.monotonic() + 60
with state:
    while pending and time.monotonic() < deadline:
        state.wait(0.1)
    left = len(pending)
say(f"done {published} {acked} {left}")
c.disconnect()
c.loop_stop()
