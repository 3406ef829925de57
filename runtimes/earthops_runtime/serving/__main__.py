"""The predictor command: ``python -m earthops_runtime.serving`` (the InferenceService's container
command, and what ``earthops serve`` / ``earthops run -f`` start on 127.0.0.1).

::

    python -m earthops_runtime.serving --model-uri URI --model-name NAME
        [--http_port P] [--host H] [--grpc_port G | --enable_grpc true]
        [--device auto|cpu|cuda] [--max-batch-size N] [--max-batch-wait-ms MS]
        [--max-payload-bytes N] [--max-scene-pixels N] [--scene-uri-prefix PREFIX ...] [--output-uri-prefix PREFIX ...]
        [--canary-model-uri URI --canary-percent P]

``--model-uri``: a registry version folder (``file:///.../models/<ns>/<model>/<vN>``, a path, or
``s3://bucket/prefix/models/<ns>/<model>/<vN>``); S3 credentials and endpoint come from the
environment as the store reads them (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``...), never from a flag. ``--model-name``: the name clients use
(``/v2/models/NAME/infer``, ``/v1/models/NAME:predict``).

KServe's own flags keep their underscores (``--http_port`` default 8080, ``--max_threads``...:
``kserve.model_server``'s parser is this parser's parent); earthops' flags use dashes (underscore
spellings are accepted too). gRPC v2 is served only when asked: ``--grpc_port G``, or
``--enable_grpc true`` (port 8081).
``--host``: the REST bind address (default 0.0.0.0 as in a pod; ``earthops serve`` uses 127.0.0.1).
``--http_port 0`` picks a free port (the ready line says which).

``--max-scene-pixels``: a scene whose width x height x bands, or a segmentation mosaic whose
height x width x classes, is over this many values gets 413 (default 2**28: a 1 GiB float32 mosaic;
the byte limits alone let a small compressed GeoTIFF declare a huge grid).

``--scene-uri-prefix``: scenes sent by URI (``{"scene": {"uri": ...}}``, ``scene_uri``) must start
with one of these (e.g. the store's ``s3://bucket/scenes/``); others get 403. Without it any
``file://`` or ``s3://`` GeoTIFF the process can read is served: restrict it wherever clients are
not trusted with the predictor's files and credentials. ``--output-uri-prefix``: where a client may
have a result written (the ``output_uri`` parameter; 403 elsewhere); without it results only come
back inline.

``--canary-model-uri`` / ``--canary-percent``: one server loads both versions and answers
``--canary-percent`` of the requests for NAME with the canary (a smooth weighted round robin:
deterministic); the response names the version that answered (v2 ``model_version``, v1
``model_version``, header ``x-earthops-model-version``), and ``/v2/models/NAME/versions/V/infer``
asks one version. On a cluster KServe splits traffic between revisions instead.

Startup: each version is loaded and runs one warm-up forward before the port opens; then one line
is printed to stdout::

    earthops predictor ready at http://127.0.0.1:8080 — model NAME (v3 100%): ...

A version that cannot be loaded ends the process with exit code 1 and ``error: model URI: why`` on
stderr; bad flags exit 2 (argparse).

Extending: :func:`add_arguments` declares the flags and :func:`observers_from` turns parsed flags into
the observers every decoded batch is handed to (:mod:`earthops_runtime.serving.observe`); add a
flag group and its observer there.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from earthops_runtime.monitoring import add_arguments as add_monitoring_arguments
from earthops_runtime.monitoring import monitor_from_arguments
from earthops_runtime.serving.loaded import DEVICES

EXIT_LOAD_FAILED = 1


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < (1 if kind is int else 0):
            raise argparse.ArgumentTypeError(f"{text}: must be {'>= 1' if kind is int else '>= 0'}")
        return value
    return parse


def _percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text}: accepted: 0 to 100")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """earthops' flags (KServe's come from the parent parser)."""
    g = parser.add_argument_group("earthops predictor")
    g.add_argument("--model-uri", "--model_uri", dest="model_uri", required=True,
                   help="registry version folder: file://, a path or s3:// (credentials from the environment)")
    g.add_argument("--model-name", dest="model_name", default=argparse.SUPPRESS,
                   help="the name clients call (same as KServe's --model_name)")
    g.add_argument("--host", default="0.0.0.0", help="REST bind address")
    g.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA (with autocast) when present, else CPU")
    g.add_argument("--max-batch-size", "--max_batch_size", dest="max_batch_size", type=_positive(int), default=32,
                   help="chips per forward at most (micro-batches of concurrent requests, scene chunks)")
    g.add_argument("--max-batch-wait-ms", "--max_batch_wait_ms", dest="max_batch_wait_ms", type=_positive(float),
                   default=2.0, help="how long a micro-batch waits for more requests after its first (0: never)")
    g.add_argument("--max-payload-bytes", "--max_payload_bytes", dest="max_payload_bytes", type=_positive(int),
                   default=64 << 20, help="larger request bodies get 413")
    g.add_argument("--max-scene-pixels", "--max_scene_pixels", dest="max_scene_pixels", type=_positive(int),
                   default=1 << 28, help="scenes (width x height x bands) or segmentation mosaics (x classes) "
                                         "over this many values get 413")
    g.add_argument("--scene-uri-prefix", "--scene_uri_prefix", dest="scene_uri_prefixes", action="append", default=[],
                   metavar="PREFIX", help="scene URIs clients may ask for must start with one of these (repeatable; "
                                          "default: any file:// or s3:// URI this process can read)")
    g.add_argument("--output-uri-prefix", "--output_uri_prefix", dest="output_uri_prefixes", action="append", default=[],
                   metavar="PREFIX", help="where clients may have results written (output_uri); repeatable; "
                                          "default: nowhere (results come back inline)")
    g.add_argument("--canary-model-uri", "--canary_model_uri", dest="canary_model_uri",
                   help="a second registry version answering --canary-percent of the requests")
    g.add_argument("--canary-percent", "--canary_percent", dest="canary_percent", type=_percent,
                   help="0-100: the canary's share of the requests")
    add_monitoring_arguments(parser)


def observers_from(args: argparse.Namespace) -> list[object]:
    """The observers the parsed flags ask for (each with ``observe(batch)``); none by default.
    ``--monitor-reference``: the drift monitor of the served version (a missing or unusable reference
    is a ValueError naming it: exit 1 before the port opens)."""
    monitor = monitor_from_arguments(args, model_uri=args.model_uri)
    return [monitor] if monitor is not None else []


def parser() -> argparse.ArgumentParser:
    from kserve import model_server  # parses sys.argv at import (KServe's way); its parser is our parent

    p = argparse.ArgumentParser(prog="python -m earthops_runtime.serving", parents=[model_server.parser],
                                description="earthops predictor: a KServe model server for a registered EO model")
    add_arguments(p)
    # gRPC only when asked for (KServe's default is on, at 8081): --grpc_port G or --enable_grpc true
    p.set_defaults(enable_grpc=False, grpc_port=None)
    return p


def grpc_port(args: argparse.Namespace) -> int | None:
    """The gRPC port to serve on, or None: ``--grpc_port`` given, or ``--enable_grpc true`` (8081)."""
    if args.grpc_port is not None:
        return int(args.grpc_port)
    return 8081 if args.enable_grpc else None


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (args.canary_model_uri is None) != (args.canary_percent is None):
        p.error("--canary-model-uri and --canary-percent go together")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from earthops_runtime.serving.loaded import ModelLoadError
    from earthops_runtime.serving.server import build_models, serve

    try:
        models = build_models(args.model_uri, args.model_name, canary_model_uri=args.canary_model_uri,
                              canary_percent=args.canary_percent, device=args.device, observers=observers_from(args),
                              max_batch_size=args.max_batch_size, max_batch_wait_ms=args.max_batch_wait_ms,
                              scene_uri_prefixes=args.scene_uri_prefixes,
                              output_uri_prefixes=args.output_uri_prefixes,
                              max_scene_pixels=args.max_scene_pixels)
    except (ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_LOAD_FAILED
    serve(models, http_port=args.http_port, host=args.host, grpc_port=grpc_port(args),
          max_payload_bytes=args.max_payload_bytes, grpc_max_threads=args.max_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
