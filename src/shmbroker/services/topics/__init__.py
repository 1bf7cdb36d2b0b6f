"""The broker's own service: publish/subscribe topics, relayed by the server.

Every broker.Server has one TopicBroker (srv.service("topics")). A client opens a
publisher or a subscriber on a topic as a sub-session (reserved function codes
below, handled by the server itself, for every Session class); messages
published go, in the publisher's order, into each subscriber's queue, and a
subscriber takes them with a long-poll FETCH: the request waits at the server
until its queue has something, then carries a batch back in its writable
argument. The same frames on a socket session and a shared-memory one, so
the semantics are the same for a subscriber in another session or over TCP.
Within a session a ring publisher's messages reach the direct subscribers
through its broadcast ring, read in place; this relay is what the others get.

A subscriber's name that ends in "*" is a prefix: "prices.*" subscribes to
every topic whose name starts with "prices.", those there now and those made
later ("*" alone: every topic). Such a subscriber is always relayed; before a
publisher's first message it gets a control message (sequence 0, TOPIC_OF)
with that publisher's topic name. A publisher's topic name cannot end in "*".
The cost is at subscribe and when a topic is made, never per message.

Quality of service, per subscriber: `capacity` (messages its queue holds);
`policy` for a full queue: "block" (the publish waits at the server until
every blocking subscriber has room, up to the publisher's `block_timeout`,
then fails with TIMED_OUT and nobody gets it), "drop" (the oldest queued
message is dropped and counted exactly: the subscriber's `lost`), or
"disconnect" (the subscriber is closed with the reason, which its next
receive raises); `history`: up to that many of the topic's last messages
delivered first to a late joiner (the topic keeps as many as its publishers'
largest `history`).

Function codes (h: the call carries the publisher's or subscriber's handle):

    TOPIC_PUBLISHER      arg 0 topic name (UTF-8, 1-200 bytes), arg 1 options (JSON bytes, optional)
                         -> a publisher handle
    TOPIC_PUBLISH    h   arg 0 the payload, arg 1 its meta (bytes, may be empty) -> 0
    TOPIC_PUBLISH_MANY h arg 0 the payloads back to back, arg 1 the batch's table: u32 count, then per message
                         a TABLE_ENTRY (u32 payload length, u32 meta length), then the metas
                         -> how many were published (all of them, or an error)
    TOPIC_SUBSCRIBER     arg 0 topic name, arg 1 options (JSON bytes, optional) -> a subscriber handle
    TOPIC_FETCH      h   arg 0 writable (the batch), arg 1 int: at most this many messages
                         -> how many arg 0 holds (waits while there are none)
    TOPIC_LIST           arg 0 writable -> JSON: the topics, their publishers, subscribers, counters
    TOPIC_DIRECT     h   arg 0 int publisher id, arg 1 int sequence -> 0: a direct subscriber, told of a
                         new ring publisher of its session (RING_ADD), reads its ring in place from that
                         message on (0: it could not: relay it on); the server relays it no more of them

A direct subscriber learns of a ring publisher that came after it through a
control message (RING_ADD, the ring's name) ahead of that publisher's first
relayed message; it joins the ring, takes the relayed messages until the ring
gives the next one, then says so (TOPIC_DIRECT) and drops what is relayed twice.

A FETCH's batch: u64 messages lost since the last batch, then each message as
u32 publisher id, u64 sequence (per publisher, from 1), u32 meta length, u32
payload length, the meta, the payload; all little-endian.

Everything a client sends is untrusted: names, options, tables, lengths are
checked and a bad one fails only that request (ARGUMENT). Handles are the
framework's sub-session handles (BadHandle for anything else).
"""
