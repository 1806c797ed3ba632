"""The DICOM upper layer (PS3.8) as an acceptor of C-ECHO and C-STORE: what ``carina dicom-listen``
receives with.

Why not pynetdicom's acceptor: with a C-STORE handler that does nothing, it receives 0.45× of
DCMTK's ``storescp`` on the same series (``bench/dicom.py``'s setup, 2 cores): its association
and DUL threads poll their queues with 1 ms sleeps and turn every command and data set into
Python objects. This one reads each PDU whole with blocking ``recv_into``, one thread per
association, and hands the data set to its handler as the bytes that came (decoding is the
handler's business). pynetdicom stays the sender (``queues/dispatch.py``) and the tests' peer.

What it negotiates, and what it leaves at the standard's defaults:

- An association is accepted from a calling AE title on the allow-list only (any other is
  rejected: permanent, "calling AE title not recognised"), for the DICOM application context,
  up to ``max_associations`` at once (more are rejected as transient, "local limit exceeded").
- A presentation context is accepted for Verification and for the storage SOP classes it is
  given, with the first of the proposed transfer syntaxes that pydicom knows; others are
  answered "abstract syntax not supported" or "transfer syntaxes not supported".
- It receives PDUs of at most ``max_pdu_bytes`` and sends its small answers whole. No
  asynchronous operations window, role selection, extended negotiation or user identity is
  answered: one operation at a time, the requestor as SCU, as PS3.7 has it without them.
- A peer that breaks the protocol (an unexpected PDU, a PDU too large, a data set for an
  unknown context, an operation other than C-ECHO and C-STORE) is sent an A-ABORT, and the
  association ends as aborted; so does one silent for ``timeout_s``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

from queues.errors import CarinaError

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLEMENTATION_CLASS_UID = "2.25.69999733454864269299064267874360358318"  # Carina's acceptor
IMPLEMENTATION_VERSION = "CARINA_SCP_1"
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)
ASSOCIATE_LIMIT = 64 * 1024  # the largest A-ASSOCIATE-RQ read: 128 contexts of a few UIDs each fit
MAX_INSTANCE_BYTES = 2**31  # one data set held in memory: larger ones are aborted
C_STORE_RQ, C_ECHO_RQ, C_STORE_RSP, C_ECHO_RSP = 0x0001, 0x0030, 0x8001, 0x8030
NO_DATA_SET = 0x0101
SOP_CLASS_NOT_SUPPORTED = 0x0122
# A-ASSOCIATE-RJ (result, source, reason) as PS3.8 9.3.4 numbers them
REJECT_CALLING_AE = (1, 1, 3)
REJECT_APPLICATION_CONTEXT = (1, 1, 2)
REJECT_PROTOCOL_VERSION = (1, 2, 2)
REJECT_BUSY = (2, 3, 2)
ACCEPTED, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4


class ProtocolError(CarinaError):
    """The peer broke the upper layer protocol: the association is aborted."""


class PeerGone(CarinaError):
    """The connection closed or went silent for longer than the timeout."""


@dataclass(frozen=True)
class Association:
    """One accepted association: who called, from where, and its accepted contexts
    (presentation context id → (abstract syntax, transfer syntax))."""

    calling_ae: str
    called_ae: str
    address: str
    contexts: dict[int, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreRequest:
    """One C-STORE request's command: its SOP class and instance UIDs (as the peer sent them,
    unchecked) and the transfer syntax its data set is encoded in."""

    association: Association
    sop_class: str
    sop_instance: str
    transfer_syntax: str


class Incoming(Protocol):
    """One data set as its fragments arrive (the bytes as they came: no file meta, no preamble)."""

    def add(self, fragment: memoryview) -> None:
        """The next fragment: a view valid only until this returns (copy what is kept)."""

    def end(self) -> int:
        """The data set is whole: the DIMSE status to answer."""

    def drop(self) -> None:
        """The association ended before the data set did."""


class Refused:
    """A data set read to its end and answered ``status`` (nothing of it kept)."""

    def __init__(self, status: int) -> None:
        self.status = status

    def add(self, fragment: memoryview) -> None:
        pass

    def end(self) -> int:
        return self.status

    def drop(self) -> None:
        pass


class Handler(Protocol):
    """What the acceptor tells its user; ``on_store`` takes the data set that follows its command."""

    def on_accepted(self, association: Association) -> None: ...

    def on_rejected(self, calling_ae: str, address: str) -> None: ...

    def on_store(self, request: StoreRequest) -> Incoming: ...

    def on_released(self, association: Association) -> None: ...

    def on_aborted(self, association: Association) -> None: ...


@dataclass(frozen=True)
class Request:
    """An A-ASSOCIATE-RQ: the fields the answer echoes, and each proposed presentation context
    (id → (abstract syntax, transfer syntaxes in the order proposed))."""

    version: int
    called: bytes
    calling: bytes
    application_context: str
    contexts: dict[int, tuple[str, tuple[str, ...]]]

    @property
    def calling_ae(self) -> str:
        return self.calling.decode("ascii", "replace").strip()

    @property
    def called_ae(self) -> str:
        return self.called.decode("ascii", "replace").strip()


# PDU and item codec ------------------------------------------------------------------------------
def _uid(value: bytes | memoryview) -> str:
    return bytes(value).rstrip(b"\0 ").decode("ascii", "replace")


def _items(data: bytes | memoryview, what: str):
    """(type, value) of each item in ``data`` (1 byte type, 1 reserved, 2 bytes big-endian length)."""
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise ProtocolError(f"{what}: an item header cut short")
        kind, length = data[offset], int.from_bytes(data[offset + 2:offset + 4], "big")
        if offset + 4 + length > len(data):
            raise ProtocolError(f"{what}: an item of {length} bytes runs past its PDU")
        yield kind, data[offset + 4:offset + 4 + length]
        offset += 4 + length


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def parse_request(body: bytes | memoryview) -> Request:
    """Decode an A-ASSOCIATE-RQ's body (PS3.8 9.3.2).

    Raises:
        ProtocolError: it is malformed (too short, items running past it, a context without an
            abstract syntax).
    """
    if len(body) < 68:
        raise ProtocolError(f"A-ASSOCIATE-RQ of {len(body)} bytes: shorter than its fixed fields")
    application_context, contexts = "", {}
    for kind, value in _items(body[68:], "A-ASSOCIATE-RQ"):
        if kind == 0x10:
            application_context = _uid(value)
        elif kind == 0x20:
            if len(value) < 4:
                raise ProtocolError("A-ASSOCIATE-RQ: a presentation context item cut short")
            abstract, syntaxes = None, []
            for sub, sub_value in _items(value[4:], "a presentation context"):
                if sub == 0x30:
                    abstract = _uid(sub_value)
                elif sub == 0x40:
                    syntaxes.append(_uid(sub_value))
            if abstract is None:
                raise ProtocolError(f"A-ASSOCIATE-RQ: presentation context {value[0]} has no abstract syntax")
            contexts[value[0]] = (abstract, tuple(syntaxes))
    return Request(int.from_bytes(body[0:2], "big"), bytes(body[4:20]), bytes(body[20:36]), application_context,
                   contexts)


def negotiate(request: Request, abstract_syntaxes: frozenset[str],
              transfer_syntaxes: frozenset[str]) -> dict[int, tuple[int, str]]:
    """Each proposed context's result and transfer syntax (id → (result, syntax)): accepted with
    the first proposed syntax in ``transfer_syntaxes``, else refused with the reason."""
    results = {}
    for context_id, (abstract, proposed) in request.contexts.items():
        if abstract not in abstract_syntaxes:
            results[context_id] = (ABSTRACT_SYNTAX_NOT_SUPPORTED, proposed[0] if proposed else "")
            continue
        chosen = next((ts for ts in proposed if ts in transfer_syntaxes), None)
        results[context_id] = ((ACCEPTED, chosen) if chosen else
                               (TRANSFER_SYNTAXES_NOT_SUPPORTED, proposed[0] if proposed else ""))
    return results


def encode_accept(request: Request, results: dict[int, tuple[int, str]], max_pdu_bytes: int) -> bytes:
    """The A-ASSOCIATE-AC PDU answering ``request`` with ``results`` (PS3.8 9.3.3)."""
    body = bytearray(struct.pack(">HH", 1, 0) + request.called + request.calling + bytes(32))
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for context_id, (result, syntax) in sorted(results.items()):
        body += _item(0x21, bytes((context_id, 0, result, 0)) + _item(0x40, syntax.encode()))
    user = (_item(0x51, struct.pack(">I", max_pdu_bytes)) + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
            + _item(0x55, IMPLEMENTATION_VERSION.encode()))
    body += _item(0x50, user)
    return _pdu(ASSOCIATE_AC, bytes(body))


def encode_reject(result: int, source: int, reason: int) -> bytes:
    return _pdu(ASSOCIATE_RJ, bytes((0, result, source, reason)))


ABORT_PDU = _pdu(ABORT, bytes((0, 0, 2, 0)))  # from the service provider, reason not specified
RELEASE_RP_PDU = _pdu(RELEASE_RP, bytes(4))


# DIMSE command sets (implicit VR little endian, group 0000) --------------------------------------
def parse_command(data: bytes) -> dict[int, bytes]:
    """The elements of a command set, by element number (the group is always 0000).

    Raises:
        ProtocolError: an element runs past the command set, or is not of group 0000.
    """
    elements, offset = {}, 0
    while offset < len(data):
        if offset + 8 > len(data):
            raise ProtocolError("a command set cut short")
        group, element, length = struct.unpack_from("<HHI", data, offset)
        if group != 0 or offset + 8 + length > len(data):
            raise ProtocolError(f"a command element ({group:04x},{element:04x}) of {length} bytes is malformed")
        elements[element] = data[offset + 8:offset + 8 + length]
        offset += 8 + length
    return elements


def _us(elements: dict[int, bytes], element: int) -> int:
    value = elements.get(element, b"")
    if len(value) != 2:
        raise ProtocolError(f"command element (0000,{element:04x}) missing or not an unsigned short")
    return int.from_bytes(value, "little")


def encode_response(command: int, message_id: int, status: int, sop_class: str, sop_instance: str | None) -> bytes:
    """A C-ECHO-RSP or C-STORE-RSP command set, group length first."""
    def element(number: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, number, len(value)) + value

    def uid(value: str) -> bytes:
        raw = value.encode()
        return raw + b"\0" if len(raw) % 2 else raw

    rest = (element(0x0002, uid(sop_class)) + element(0x0100, struct.pack("<H", command))
            + element(0x0120, struct.pack("<H", message_id)) + element(0x0800, struct.pack("<H", NO_DATA_SET))
            + element(0x0900, struct.pack("<H", status))
            + (element(0x1000, uid(sop_instance)) if sop_instance is not None else b""))
    return element(0x0000, struct.pack("<I", len(rest))) + rest


def encode_p_data(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF PDU carrying ``command`` whole as the last command fragment."""
    return _pdu(P_DATA, struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command)


# One association -----------------------------------------------------------------------------------
def recv_exact(sock: socket.socket, size: int) -> bytearray:
    """Exactly ``size`` bytes from ``sock``.

    Raises:
        PeerGone: the peer closed the connection or was silent past the socket's timeout.
    """
    buffer = bytearray(size)
    view, received = memoryview(buffer), 0
    try:
        while received < size:
            count = sock.recv_into(view[received:], size - received)
            if count == 0:
                raise PeerGone("the peer closed the connection")
            received += count
    except TimeoutError as e:
        raise PeerGone("the peer was silent past the network timeout") from e
    except OSError as e:
        raise PeerGone(f"the connection failed: {e}") from e
    return buffer


def send_all(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` whole.

    Raises:
        PeerGone: the connection failed (the peer left, or stopped reading past the timeout).
    """
    try:
        sock.sendall(data)
    except OSError as e:  # TimeoutError among them
        raise PeerGone(f"the connection failed: {e}") from e


def read_pdu(sock: socket.socket, limit: int) -> tuple[int, bytearray]:
    """One PDU: its type and body.

    Raises:
        ProtocolError: its length is over ``limit``.
        PeerGone: see :func:`recv_exact`.
    """
    kind, _, length = struct.unpack(">BBI", recv_exact(sock, 6))
    if length > limit:
        raise ProtocolError(f"a PDU of type {kind} and {length} bytes: more than the {limit} offered")
    return kind, recv_exact(sock, length)


@dataclass(frozen=True)
class Acceptor:
    """What the acceptor takes: the calling AE titles, the abstract and transfer syntaxes, the
    largest PDU, the associations at once, the network timeout."""

    allowed_aes: frozenset[str]
    abstract_syntaxes: frozenset[str]
    transfer_syntaxes: frozenset[str]
    max_pdu_bytes: int
    max_associations: int
    timeout_s: float


class Session:
    """One connection, from its A-ASSOCIATE-RQ to its release or abort."""

    def __init__(self, sock: socket.socket, address: str, acceptor: Acceptor, handler: Handler,
                 slots: threading.BoundedSemaphore) -> None:
        self.sock, self.address, self.acceptor, self.handler, self.slots = sock, address, acceptor, handler, slots

    def run(self) -> None:
        self.sock.settimeout(self.acceptor.timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers are small: no Nagle wait
        try:
            kind, body = read_pdu(self.sock, ASSOCIATE_LIMIT)
            if kind != ASSOCIATE_RQ:
                raise ProtocolError(f"a PDU of type {kind} before any association")
            association = self.associate(parse_request(body))
        except (ProtocolError, PeerGone) as e:
            log.warning("dicom: a connection from %s ended before an association: %s", self.address, e)
            self.abort()
            return
        if association is None:
            return
        try:
            self.serve(association)
        finally:
            self.slots.release()

    def associate(self, request: Request) -> Association | None:
        """Accept or reject ``request``; the association, or None if rejected."""
        rejection = (REJECT_PROTOCOL_VERSION if not request.version & 1 else
                     REJECT_APPLICATION_CONTEXT if request.application_context != APPLICATION_CONTEXT else
                     REJECT_CALLING_AE if request.calling_ae not in self.acceptor.allowed_aes else None)
        if rejection is None and not self.slots.acquire(blocking=False):
            rejection = REJECT_BUSY
            log.warning("dicom: association from %s at %s rejected: %d associations already", request.calling_ae,
                        self.address, self.acceptor.max_associations)
        if rejection is not None:
            self.handler.on_rejected(request.calling_ae, self.address)
            send_all(self.sock, encode_reject(*rejection))
            return None
        results = negotiate(request, self.acceptor.abstract_syntaxes, self.acceptor.transfer_syntaxes)
        try:
            send_all(self.sock, encode_accept(request, results, self.acceptor.max_pdu_bytes))
        except PeerGone:
            self.slots.release()
            raise
        association = Association(request.calling_ae, request.called_ae, self.address,
                                  {i: (request.contexts[i][0], ts) for i, (r, ts) in results.items() if r == ACCEPTED})
        self.handler.on_accepted(association)
        return association

    def serve(self, association: Association) -> None:
        """Answer DIMSE requests until the peer releases the association, or it is aborted."""
        command, size = bytearray(), 0
        pending: tuple[Incoming, Callable[[int], bytes]] | None = None  # the data set arriving, its answer
        try:
            while True:
                kind, body = read_pdu(self.sock, self.acceptor.max_pdu_bytes)
                if kind == RELEASE_RQ:
                    if pending is not None:  # its instance never arrived whole: not a release
                        raise ProtocolError("a release request before the data set of the last C-STORE")
                    self.handler.on_released(association)  # every request was answered: released, even
                    with contextlib.suppress(PeerGone):    # if the peer has left without waiting for the reply
                        send_all(self.sock, RELEASE_RP_PDU)
                    return
                if kind == ABORT:
                    raise PeerGone("the peer aborted the association")
                if kind != P_DATA:
                    raise ProtocolError(f"a PDU of type {kind} during the association")
                for context_id, control, fragment in _pdvs(memoryview(body)):
                    if context_id not in association.contexts:
                        raise ProtocolError(f"data for presentation context {context_id}, which was not accepted")
                    if control & 1:  # a command fragment
                        if pending is not None:
                            raise ProtocolError("a command before the data set of the last one")
                        command += fragment
                        if control & 2:
                            pending = self.begin(association, context_id, parse_command(bytes(command)))
                            command.clear()
                        continue
                    if pending is None:
                        raise ProtocolError("a data set without its command")
                    size += len(fragment)
                    if size > MAX_INSTANCE_BYTES:
                        raise ProtocolError(f"a data set of more than {MAX_INSTANCE_BYTES} bytes")
                    incoming, answer = pending
                    incoming.add(fragment)
                    if control & 2:
                        pending, size = None, 0
                        status = incoming.end()
                        send_all(self.sock, answer(status))
        except Exception as e:  # ProtocolError, PeerGone, or a fault of the handler's, which ends this association only
            if pending is not None:
                pending[0].drop()
            if isinstance(e, PeerGone):
                log.info("dicom: association from %s at %s ended: %s", association.calling_ae, self.address, e)
            else:
                log.log(logging.WARNING if isinstance(e, ProtocolError) else logging.ERROR,
                        "dicom: association from %s at %s aborted: %s", association.calling_ae, self.address, e,
                        exc_info=not isinstance(e, ProtocolError))
            self.abort()
            self.handler.on_aborted(association)

    def begin(self, association: Association, context_id: int,
              elements: dict[int, bytes]) -> tuple[Incoming, Callable[[int], bytes]] | None:
        """Run a request whose command has arrived: a C-ECHO is answered (None); for a C-STORE,
        what takes its data set and how its answer is encoded.

        Raises:
            ProtocolError: another command, or a C-STORE without a data set.
        """
        command, message_id = _us(elements, 0x0100), _us(elements, 0x0110)
        sop_class = _uid(elements.get(0x0002, b""))
        without_data_set = elements.get(0x0800) == struct.pack("<H", NO_DATA_SET)
        if command == C_ECHO_RQ and without_data_set:
            send_all(self.sock, encode_p_data(context_id, encode_response(C_ECHO_RSP, message_id, 0, VERIFICATION,
                                                                        None)))
            return None
        if command != C_STORE_RQ or without_data_set:
            raise ProtocolError(f"DIMSE command 0x{command:04x}: only C-ECHO and C-STORE with a data set are served")
        sop_instance = _uid(elements.get(0x1000, b""))
        abstract, transfer_syntax = association.contexts[context_id]
        incoming = (self.handler.on_store(StoreRequest(association, sop_class, sop_instance, transfer_syntax))
                    if sop_class == abstract else Refused(SOP_CLASS_NOT_SUPPORTED))

        def answer(status: int) -> bytes:
            return encode_p_data(context_id, encode_response(C_STORE_RSP, message_id, status, sop_class, sop_instance))
        return incoming, answer

    def abort(self) -> None:
        try:
            self.sock.sendall(ABORT_PDU)
        except OSError:
            pass


def _pdvs(body: memoryview):
    """(context id, message control header, fragment) of each presentation data value."""
    offset = 0
    while offset < len(body):
        if offset + 6 > len(body):
            raise ProtocolError("a P-DATA-TF item cut short")
        length = int.from_bytes(body[offset:offset + 4], "big")
        if length < 2 or offset + 4 + length > len(body):
            raise ProtocolError(f"a presentation data value of {length} bytes is malformed")
        yield body[offset + 4], body[offset + 5], body[offset + 6:offset + 4 + length]
        offset += 4 + length


class Server(socketserver.ThreadingTCPServer):
    """The acceptor on ``address``: a thread per connection, each a :class:`Session`.

    ``allow_address`` (a peer's IP address → whether it may connect) is asked before anything is
    read from a connection; a refused one is closed.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], acceptor: Acceptor, handler: Handler,
                 allow_address: Callable[[str], bool] | None = None) -> None:
        self.acceptor, self.handler, self.allow_address = acceptor, handler, allow_address
        self.slots = threading.BoundedSemaphore(acceptor.max_associations)
        super().__init__(address, socketserver.BaseRequestHandler)

    def verify_request(self, request, client_address) -> bool:
        return self.allow_address is None or self.allow_address(client_address[0])

    def finish_request(self, request, client_address) -> None:
        Session(request, client_address[0], self.acceptor, self.handler, self.slots).run()
