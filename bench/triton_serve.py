"""Triton Inference Server (python backend, ONNX Runtime inside) vs ONNX Runtime in-process,
under the same closed-loop load.

Exports TinyViM as a python-backend model repository, starts tritonserver on 127.0.0.1 (free
ports), and at each concurrency runs N clients that each send one request (batch 1 by default)
and wait for its answer, for --duration seconds: first against the server (HTTP, and gRPC with
--protocol http,grpc), then the same N threads on one in-process ONNX Runtime session of the
same ONNX. Prints p50/p90/p99 latency, images/s, failed requests, the server's own batch
statistics (mean batch, executions per batch size, queue time) and the throughput ratio
server / in-process per concurrency. With --rounds R the whole sweep repeats R times (server and
in-process alternating throughout) and the ratios' median is reported: on a shared machine one
10-second window can land on someone else's burst. The server is stopped at the end, also on
failure.

    python bench/triton_serve.py [--variant s] [--img-size 224] [--concurrency 1,4,8] [--duration 10] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from tinyvim.contract import TRITON_MODEL_NAME, TRITON_ONNX_FILE, parse_size
from tinyvim.engines.profile import format_environment
from tinyvim.serve.load import format_load_table, run_serve_bench
from tinyvim.serve.repository import TritonSettings, write_repository
from tinyvim.serve.server import TritonServer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="s")
    ap.add_argument("--img-size", default="224")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--protocol", default="http,grpc")
    ap.add_argument("--batch", type=int, default=1, help="images per request")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-queue-delay-us", type=int, default=TritonSettings().max_queue_delay_us)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads, server instance and in-process "
                                                          "(0: ONNX Runtime's default, all cores)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    settings = TritonSettings(max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
                              instances=args.instances, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="tinyvim-bench-triton-") as tmp:
        repo = Path(tmp) / "repo"
        print(f"exporting TinyViM-{args.variant.upper()} {args.img_size} as a python-backend repository...")
        write_repository(repo, settings, export=dict(variant=args.variant, img_size=parse_size(args.img_size),
                                                     dynamic_batch=True))
        with TritonServer(repo, ports={"http": 0, "grpc": 0, "metrics": 0}) as server:
            rounds = [run_serve_bench(server.http_url, TRITON_MODEL_NAME, protocols=args.protocol.split(","),
                                      grpc_url=server.grpc_url,
                                      concurrencies=[int(c) for c in args.concurrency.split(",")],
                                      duration_s=args.duration, warmup_s=args.warmup, batch=args.batch,
                                      compare_onnx=str(repo / TRITON_MODEL_NAME / "1" / TRITON_ONNX_FILE),
                                      threads=args.threads or None)
                      for _ in range(args.rounds)]
    print(format_environment(rounds[0]["environment"], []))
    print(f"TinyViM-{args.variant.upper()} {args.img_size}, batch {args.batch} per request, max_batch_size "
          f"{settings.max_batch_size}, max queue delay {settings.max_queue_delay_us} us, {settings.instances} "
          "instance(s)")
    for i, doc in enumerate(rounds, 1):
        print(f"round {i}/{len(rounds)}")
        print(format_load_table(doc["results"]))
        for e in doc["results"]:
            if "server" in e:
                print(f"  {e['backend']} c={e['concurrency']}: executions by batch size "
                      f"{e['server']['executions_by_batch_size']}")
    for backend in rounds[0]["throughput_ratio_vs_inprocess"]:
        per_round = [doc["throughput_ratio_vs_inprocess"][backend] for doc in rounds]
        print(f"{backend} / ort-inprocess throughput, median of {len(rounds)} round(s): " + ", ".join(
            f"{statistics.median(r[c] for r in per_round):.2f}x at concurrency {c} "
            f"({', '.join(f'{r[c]:.2f}' for r in per_round)})" for c in per_round[0]))
    if args.json:
        settings_json = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()}
        Path(args.json).write_text(json.dumps({"triton_settings": settings_json, "rounds": rounds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
