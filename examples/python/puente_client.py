#!/usr/bin/env python3
"""Puente from Python (grpcio): an agency's whole exchange, checked step by step.

ES-CNP lists the agencies and sends CO-DIJIN a message with an attachment, then retries the
send to show that `client_message_id` makes retries safe, and sends a firearms report written
in proto3 JSON. CO-DIJIN reads its inbox, checks both messages and their content digests, and
acknowledges the first as received, then read. ES-CNP sees it was read. An auditor fetches the
audit log's signed checkpoint and verifies its signature.

    python puente_client.py --profiles certs/dev/profiles.toml

The identities come from a profiles file (`puente serve --dev` writes one for its development
PKI; real agencies write their own). The stubs are generated from proto/ at start, into a
temporary directory. Any gRPC error or unexpected answer ends the script with exit status 1
and a message saying which step failed.
"""

import argparse
import base64
import dataclasses
import hashlib
import importlib
import importlib.resources
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import json_format
from grpc_tools import protoc

# Every call gets a deadline, so an unreachable server fails the script instead of hanging it.
DEADLINE_SECONDS = 10
# Checkpoints are signed at most every 500 ms, so the newest entry may not be in the latest one
# yet; ask a bounded number of times.
CHECKPOINT_ATTEMPTS = 40
CHECKPOINT_INTERVAL_SECONDS = 0.25

SENDER, RECIPIENT = "ES-CNP", "CO-DIJIN"


class Mismatch(Exception):
    """The exchange answered, but not what the contract promises."""


class CallFailed(Exception):
    """A gRPC call failed; the message names the step, the status code and its details."""

    def __init__(self, step, error):
        super().__init__(f"{step}: gRPC {error.code().name}: {error.details()}")


def check(condition, what):
    if not condition:
        raise Mismatch(what)


def call(step, method, request):
    """A unary call with a deadline; a gRPC error becomes CallFailed naming the step."""
    try:
        return method(request, timeout=DEADLINE_SECONDS)
    except grpc.RpcError as error:
        raise CallFailed(step, error) from None


# === Stubs and connections ===


def generate_stubs(proto_dir, out_dir):
    """Runs protoc (bundled with grpcio-tools) on proto/puente/v1/*.proto into out_dir."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    protos = sorted(str(p) for p in (proto_dir / "puente" / "v1").glob("*.proto"))
    if not protos:
        sys.exit(f"no puente/v1/*.proto under {proto_dir} (see --proto-dir)")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if status != 0:
        sys.exit(f"protoc failed on {proto_dir} (status {status})")
    sys.path.insert(0, str(out_dir))
    names = ["exchange_pb2", "exchange_pb2_grpc", "evaluation_pb2", "directory_pb2"]
    names += ["audit_pb2", "audit_pb2_grpc"]
    return {name: importlib.import_module(f"puente.v1.{name}") for name in names}


@dataclasses.dataclass
class Profile:
    """One identity of a profiles file: where the server is and which certificate to present."""

    addr: str
    cert: Path
    key: Path
    ca: Path
    server_name: str

    @staticmethod
    def load(profiles_file, name):
        try:
            with open(profiles_file, "rb") as f:
                entry = tomllib.load(f)[name]
            base = profiles_file.parent  # paths in a profiles file are relative to it
            return Profile(
                addr=entry["addr"],
                cert=base / entry["cert"],
                key=base / entry["key"],
                ca=base / entry["ca"],
                server_name=entry["server_name"],
            )
        except (OSError, tomllib.TOMLDecodeError) as error:
            sys.exit(f"cannot read the profiles file: {error}")
        except KeyError as missing:
            sys.exit(f"{profiles_file}: profile [{name}] has no {missing}")


def connect(profile):
    """A mutual-TLS channel: the server must present a certificate from the profile's CA for
    `server_name`, and we present the profile's client certificate."""
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=profile.ca.read_bytes(),
            private_key=profile.key.read_bytes(),
            certificate_chain=profile.cert.read_bytes(),
        )
    except OSError as error:
        sys.exit(f"cannot read the profile's certificate or key: {error}")
    # The certificate is checked against the profile's server name, whatever the address says
    # (an IP, a load balancer); the development server's is for `localhost` and `127.0.0.1`.
    options = [("grpc.ssl_target_name_override", profile.server_name)]
    return grpc.secure_channel(profile.addr, credentials, options)


# === Content digest ===


def content_sha256(pb, message):
    """SHA-256 of the deterministic encoding of a SendMessageRequest holding only the message's
    content and attachments: the digest the exchange stores and the audit log records."""
    body = pb["exchange_pb2"].SendMessageRequest(attachments=message.attachments)
    kind = message.WhichOneof("content")
    if kind == "text":
        body.text = message.text
    elif kind is not None:
        getattr(body, kind).CopyFrom(getattr(message, kind))
    return hashlib.sha256(body.SerializeToString(deterministic=True)).digest()


# === Signed checkpoints (c2sp.org/signed-note, c2sp.org/tlog-checkpoint) ===


@dataclasses.dataclass
class VerifierKey:
    """A signed-note verifier key: `<name>+<key id, 8 hex digits>+<base64(0x01 || Ed25519 key)>`."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    @staticmethod
    def parse(text):
        """Raises ValueError saying what is wrong with `text`."""
        try:
            name, key_id_hex, typed_key = text.strip().split("+", 2)
            key_id = bytes.fromhex(key_id_hex)
            typed_key = base64.b64decode(typed_key, validate=True)
        except ValueError:  # also binascii.Error
            raise ValueError(f"not a verifier key (name+keyid+key): {text!r}") from None
        if typed_key[:1] != b"\x01" or len(typed_key) != 33:
            raise ValueError("the verifier key is not an Ed25519 key")
        if hashlib.sha256(name.encode() + b"\n" + typed_key).digest()[:4] != key_id:
            raise ValueError("the verifier key's id does not match its key")
        return VerifierKey(name, key_id, Ed25519PublicKey.from_public_bytes(typed_key[1:]))


def verify_checkpoint(key, note):
    """Checks the note's signature by `key` and returns the checkpoint's origin, tree size and
    root hash."""
    text, separator, signatures = note.rpartition("\n\n")
    check(separator != "", "checkpoint: no blank line before the signatures")
    text += "\n"  # the signed text ends with its last line's newline
    prefix = f"\u2014 {key.name} "
    for line in signatures.splitlines():
        if not line.startswith(prefix):
            continue
        try:
            blob = base64.b64decode(line[len(prefix) :], validate=True)
            if blob[:4] == key.key_id:
                key.public_key.verify(blob[4:], text.encode())
                break
        except (ValueError, InvalidSignature):
            continue
    else:
        raise Mismatch(f"checkpoint: no valid signature by {key.name}")
    origin, size, root = (text.split("\n") + ["", ""])[:3]
    try:
        return origin, int(size), base64.b64decode(root, validate=True)
    except ValueError:
        raise Mismatch("checkpoint: its body is not origin, tree size, base64 root") from None


# === The walk-through ===


def run(pb, profiles_file, report_file, verifier_key):
    ex, ev, directory = pb["exchange_pb2"], pb["evaluation_pb2"], pb["directory_pb2"]
    es = pb["exchange_pb2_grpc"].ExchangeServiceStub(connect(Profile.load(profiles_file, "es-cnp")))
    co = pb["exchange_pb2_grpc"].ExchangeServiceStub(
        connect(Profile.load(profiles_file, "co-dijin"))
    )
    auditor = pb["audit_pb2_grpc"].AuditServiceStub(connect(Profile.load(profiles_file, "auditor")))

    # 1. Who can ES-CNP send to?
    agencies = call("ListAgencies", es.ListAgencies, ex.ListAgenciesRequest()).agencies
    for agency in agencies:
        region = directory.Region.Name(agency.region)
        print(f"agency {agency.agency_id:<10} {region:<12} {agency.name}")
    active = {a.agency_id for a in agencies if a.status == directory.AGENCY_STATUS_ACTIVE}
    check(RECIPIENT in active, f"{RECIPIENT} is not an active agency of the directory")

    # 2. Send. The client_message_id is the idempotency key: keep it until the send succeeds.
    request = ex.SendMessageRequest(
        client_message_id=f"python-example-{uuid.uuid4()}",
        recipients=[RECIPIENT],
        topic=ex.TOPIC_MONEY_LAUNDERING,
        subject="Structuring through exchange houses",
        handling=ex.HANDLING_CODE_H2,
        evaluation=ev.Evaluation(
            source_reliability=ev.SOURCE_RELIABILITY_B,
            information_accuracy=ev.INFORMATION_ACCURACY_2,
        ),
        case_reference="ES-2026-0042",
        text="Cash deposits below the reporting threshold into 14 accounts, January to March.",
        attachments=[
            ex.Attachment(
                filename="accounts.csv",
                media_type="text/csv",
                data=b"iban,holder\nES9121000418450200051332,Example Holder\n",
            )
        ],
    )
    sent = call("SendMessage", es.SendMessage, request)
    check(sent.message_id != "", "SendMessage returned no message_id")
    check(sent.HasField("audit_index"), "SendMessage returned no audit_index")
    print(f"sent {sent.message_id} (audit index {sent.audit_index})")

    # 3. A retry with the same key and request returns the original answer, not a duplicate...
    retried = call("SendMessage (retry)", es.SendMessage, request)
    check(
        (retried.message_id, retried.audit_index, retried.accepted_at)
        == (sent.message_id, sent.audit_index, sent.accepted_at),
        f"the retry returned {retried.message_id}, not the original {sent.message_id}",
    )
    # ... and the same key with different content is refused.
    changed = ex.SendMessageRequest()
    changed.CopyFrom(request)
    changed.text = "Something else."
    try:
        es.SendMessage(changed, timeout=DEADLINE_SECONDS)
        raise Mismatch("reusing a client_message_id for other content was accepted")
    except grpc.RpcError as error:
        check(
            error.code() == grpc.StatusCode.ALREADY_EXISTS,
            f"reusing a client_message_id: expected ALREADY_EXISTS, got {error.code().name}",
        )
    print("retry returned the same message; the key reused for other content: ALREADY_EXISTS")

    # 4. A structured report, from proto3 JSON (the format of `puente send --file`), with an
    # attachment: the report's fields (11-14) come after the attachments (10) in the encoding.
    try:
        report = json_format.Parse(report_file.read_text(), ex.SendMessageRequest())
    except (OSError, json_format.ParseError) as error:
        sys.exit(f"cannot read the report {report_file}: {error}")
    report.client_message_id = f"python-example-{uuid.uuid4()}"
    report.recipients[:] = [RECIPIENT]  # whoever the file names, CO-DIJIN checks it below
    report.attachments.add(filename="serial-plate.txt", data=b"BXK-417, frame plate replaced\n")
    report_sent = call("SendMessage (firearms report)", es.SendMessage, report)
    print(f"sent {report_sent.message_id}, a firearms report from JSON")

    # 5. CO-DIJIN reads its inbox: the backlog only, so the stream ends. A long-running client
    # would leave backlog_only unset, keep the stream open, and resume after the last sequence
    # it processed.
    inbox, last_sequence = {}, 0
    try:
        entries = co.StreamInbox(
            ex.StreamInboxRequest(after_sequence=0, backlog_only=True), timeout=DEADLINE_SECONDS
        )
        for entry in entries:
            check(entry.sequence > last_sequence, f"inbox sequence {entry.sequence} out of order")
            last_sequence = entry.sequence
            inbox[entry.message.message_id] = entry.message
    except grpc.RpcError as error:
        raise CallFailed("StreamInbox", error) from None
    for sent_id, original in ((sent.message_id, request), (report_sent.message_id, report)):
        received = inbox.get(sent_id)
        check(received is not None, f"{sent_id} is not in {RECIPIENT}'s inbox")
        check(received.sender == SENDER, f"{sent_id}: sender {received.sender!r}, not {SENDER}")
        kind = original.WhichOneof("content")
        check(
            received.WhichOneof("content") == kind
            and list(received.attachments) == list(original.attachments),
            f"{sent_id}: the kind of content or the attachments received differ from those sent",
        )
        # The exchange adds derived fields to structured reports (normalised serial numbers),
        # so only text is compared as sent; the digest below covers every kind.
        check(
            kind != "text" or received.text == original.text,
            f"{sent_id}: the text received differs from the text sent",
        )
        # The digest the audit log records: recompute it from what arrived.
        digest = content_sha256(pb, received)
        check(
            digest == received.content_sha256,
            f"{sent_id}: content_sha256 computed {digest.hex()}, "
            f"received {received.content_sha256.hex()}",
        )
    print(
        f"{RECIPIENT} received both (inbox up to sequence {last_sequence}); content_sha256 verified"
    )

    # 6. Acknowledge the first: received, then read. States only move forward.
    for state in (ex.DELIVERY_STATE_RECEIVED, ex.DELIVERY_STATE_READ):
        name = ex.DeliveryState.Name(state)
        acked = call(
            f"AcknowledgeMessage {name}",
            co.AcknowledgeMessage,
            ex.AcknowledgeMessageRequest(message_id=sent.message_id, state=state),
        )
        check(acked.state == state, f"acknowledged {name}, the exchange says {acked.state}")
    print(f"{RECIPIENT} acknowledged it as received, then read")

    # 7. The sender sees each recipient's state.
    status = call(
        "GetDeliveryStatus",
        es.GetDeliveryStatus,
        ex.GetDeliveryStatusRequest(message_id=sent.message_id),
    )
    states = {r.agency_id: r.state for r in status.recipients}
    check(
        states == {RECIPIENT: ex.DELIVERY_STATE_READ},
        f"delivery status: expected {RECIPIENT} READ, got {states}",
    )
    print(f"{SENDER} sees {RECIPIENT}: DELIVERY_STATE_READ")

    # 8. The auditor: the log's signed checkpoint, covering our messages' entries.
    info = call("GetLogInfo", auditor.GetLogInfo, pb["audit_pb2"].GetLogInfoRequest())
    if verifier_key is None:
        print(
            "warning: trusting the verifier key the server offers; pin the one its operators "
            "publish with --verifier-key"
        )
        try:
            verifier_key = VerifierKey.parse(info.verifier_key)
        except ValueError as error:
            raise Mismatch(f"GetLogInfo: {error}") from None
    for _ in range(CHECKPOINT_ATTEMPTS):
        checkpoint = call(
            "GetCheckpoint", auditor.GetCheckpoint, pb["audit_pb2"].GetCheckpointRequest()
        )
        if checkpoint.tree_size > report_sent.audit_index:
            break
        time.sleep(CHECKPOINT_INTERVAL_SECONDS)
    origin, size, root = verify_checkpoint(verifier_key, checkpoint.checkpoint)
    check(origin == info.origin, f"checkpoint origin {origin!r}, the log says {info.origin!r}")
    check(
        (size, root) == (checkpoint.tree_size, checkpoint.root_hash),
        "the signed checkpoint and the response's tree_size/root_hash differ",
    )
    newest = report_sent.audit_index
    check(size > newest, f"no checkpoint covers audit index {newest} yet")
    print(f"checkpoint of {origin}: {size} entries, root {root.hex()}, signature verified")


def verifier_key_arg(text):
    try:
        return VerifierKey.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv=None):
    repo = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profiles",
        type=Path,
        default=Path("certs/dev/profiles.toml"),
        help="profiles file with es-cnp, co-dijin and auditor (default: %(default)s)",
    )
    parser.add_argument(
        "--proto-dir",
        type=Path,
        default=repo / "proto",
        help="directory holding puente/v1/*.proto (default: the repository's proto/)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=repo / "examples" / "firearms-report.json",
        help="a SendMessageRequest in proto3 JSON (default: the repository's firearms report)",
    )
    parser.add_argument(
        "--verifier-key",
        type=verifier_key_arg,
        help="the audit log's verifier key as its operators publish it (default: ask the server)",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="puente-stubs-") as stubs:
        pb = generate_stubs(args.proto_dir.resolve(), Path(stubs))
        try:
            run(pb, args.profiles.resolve(), args.report, args.verifier_key)
        except CallFailed as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except Mismatch as error:
            print(f"mismatch: {error}", file=sys.stderr)
            return 1
    print("ok: every step answered as the contract says")
    return 0


if __name__ == "__main__":
    sys.exit(main())
