"""Linked services: one client offers a named request/response service, others call it through the broker.

    provider:  offer = session.offer("upper", handler)   # handler(call) -> status (int >= 0, or None: 0)
               offer.serve_forever()                     # or serve_one(timeout), in the provider's thread
    caller:    link = session.link("upper")
               link.send_receive(code, b"abc", out)      # as a session's: ints, bytes, Buffers, bytearrays

The broker relays (this module's two halves: LinkBroker at the server,
Offer and Link at the clients). A call travels as one blob: the caller packs
its code and arguments (pack_call), the server hands the blob to the current
provider of the name through the provider's long-poll LINK_TAKE, the
provider's handler runs on a LinkedCall (read, integer, write, ...), and the
provider's LINK_REPLY carries the status and the writes back to the caller's
waiting request. A call to a name nobody offers fails at once (NOT_FOUND); a
provider that closes or dies fails its queued and running calls
(DISCONNECTED, "the provider of ... is gone"); a new provider of the name gets
the calls made after it offered.

Within one session, both on shared memory, the broker steps out of the path:
a link asks for a private pair (LINK_PAIR) when it opens; the server makes a
segment of two SPSC rings, hands its name to the provider through its
LINK_TAKE (TAKE_PAIR), and, once the provider has attached (LINK_REPLY 0),
gives it to the caller. Then each call is the session's own C call on the
pair (a REQUEST frame into ring 0, the COMPLETE back on ring 1), and the
provider serves its pairs and its relayed calls in one loop (wait_any). A
pair ends with either side: the server unlinks the name and tells the
provider (TAKE_UNPAIR); a provider that gives one up tells the server
(LINK_UNPAIR); a caller whose provider died gets DISCONNECTED and asks again.
Calls too big for a record of the pair, a sharable session's, and callers in
other sessions go relayed.

Function codes (h: the call carries the offer's or the link's handle):

    LINK_OFFER        arg 0 name (UTF-8, 1-200 bytes)            -> an offer handle
    LINK_TAKE     h   arg 0 writable: u64 call id, i32 code, the call's packed arguments
                      (waits while no call is queued)           -> the bytes arg 0 holds
    LINK_REPLY    h   arg 0 int call id, arg 1 int status, arg 2 the packed writes, arg 3 error text
                                                                 -> 0
    LINK_OPEN         arg 0 name                                 -> a link handle
    LINK_CALL     h   arg 0 int code, arg 1 the packed arguments, arg 2 writable (the packed writes)
                                                                 -> the provider's status
    LINK_PAIR     h   (a link's) arg 0 writable: the pair's segment name, once the provider attached
                                                                 -> 0 (NOT_SUPPORTED: why there is none)
    LINK_UNPAIR   h   (an offer's) arg 0 the name of a pair the provider gave up -> 0

Everything is untrusted: the server checks names, handles, ids and lengths;
it does not look into the packed arguments (the provider's side parses them,
each a bad one failing only its call).
"""
