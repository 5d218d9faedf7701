"""Triton Inference Server (python backend, ONNX Runtime inside) vs ONNX Runtime in-process,
under the same closed-loop load.

Exports TinyViM as a python-backend model repository, starts tritonserver on 127.0.0.1 (free
ports), and at each concurrency runs N clients that each send one request (batch 1 by default)
and wait for its answer, for --duration seconds: first against the server (HTTP, and gRPC with
--protocol http,grpc), then the same N threads on one in-process ONNX Runtime session of the
same ONNX. Prints p50/p90/p99 latency, images/s, failed requests, the server's own batch
statistics (mean batch, executions per batch size, queue time) and the throughput ratio
server / in-process per concurrency. Each concurrency's --duration is measured in --slices
windows taken in turn (HTTP, gRPC, in-process, HTTP, ...), so that load drift on a shared machine
hits all of them alike. The server is stopped at the end, also on failure.

    python bench/triton_serve.py [--variant s] [--img-size 224] [--concurrency 1,4,8] [--duration 10] [--slices 5]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tinyvim.contract import TRITON_MODEL_NAME, TRITON_ONNX_FILE, parse_size
from tinyvim.tools.profile import format_environment
from tinyvim.serve.load import format_load_table, run_serve_bench
from tinyvim.serve.repository import TritonSettings, write_repository
from tinyvim.serve.server import TritonServer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="s")
    ap.add_argument("--img-size", default="224")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=0.5, help="seconds before each window")
    ap.add_argument("--protocol", default="http,grpc")
    ap.add_argument("--batch", type=int, default=1, help="images per request")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-queue-delay-us", type=int, default=TritonSettings().max_queue_delay_us)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads, server instance and in-process "
                                                          "(0: ONNX Runtime's default, all cores)")
    ap.add_argument("--slices", type=int, default=5)
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
            doc = run_serve_bench(server.http_url, TRITON_MODEL_NAME, protocols=args.protocol.split(","),
                                  grpc_url=server.grpc_url,
                                  concurrencies=[int(c) for c in args.concurrency.split(",")],
                                  duration_s=args.duration, warmup_s=args.warmup, batch=args.batch,
                                  slices=args.slices,
                                  compare_onnx=str(repo / TRITON_MODEL_NAME / "1" / TRITON_ONNX_FILE),
                                  threads=args.threads or None)
    doc["triton_settings"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()}
    print(format_environment(doc["environment"], []))
    print(f"TinyViM-{args.variant.upper()} {args.img_size}, batch {args.batch} per request, max_batch_size "
          f"{settings.max_batch_size}, max queue delay {settings.max_queue_delay_us} us, {settings.instances} "
          f"instance(s); {args.duration:g} s per point in {args.slices} alternating windows")
    print(format_load_table(doc["results"]))
    for e in doc["results"]:
        if "server" in e:
            print(f"  {e['backend']} c={e['concurrency']}: executions by batch size "
                  f"{e['server']['executions_by_batch_size']}, compute {e['server']['compute_ms_per_request']:.1f} "
                  "ms per request")
    for backend, ratios in doc["throughput_ratio_vs_inprocess"].items():
        print(f"{backend} / ort-inprocess throughput: "
              + ", ".join(f"{r:.2f}x at concurrency {c}" for c, r in ratios.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
