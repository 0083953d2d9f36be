"""Serve mode under load: requests/s and p50/p95 latency, idle and while a skill trains; batched decoding.

    .venv/bin/python experiments/serve_bench.py                  # SmolLM2, 1/4/16 clients, 20 s per level
    .venv/bin/python experiments/serve_bench.py --model tiny --clients 1 2 --seconds 2 --batch-rows 4   # smoke

* **Batched mixed-skill decoding vs one request at a time** (in this process, before the server
  starts): ``--batch-rows`` requests, each routed to one of four skills (real card exports of the
  shipped LoRA config, noise in B), greedy, ``--max-tokens`` each. Timed three ways: all rows in one
  ``serve.decode.decode_batch`` (each row with its own adapter), the same rows one at a time through
  ``decode_batch``, and one at a time through ``LoRAManager.answer`` (HF ``generate``, what
  ``Autodidact.ask`` uses). Every way produces the same tokens (tests/serve/test_decode.py).
* **The endpoint under load**: ``python evolve.py stage=serve`` (teacher=offline, learner on) on a free
  port; N client threads each send non-streamed chat completions back to back for ``--seconds``.
  Load questions are general ones the offline pack does not hold: their learning events fail at
  distillation and are dead-lettered (``queue.max_attempts=1``), so the learner trains nothing
  while the *idle* levels run. Then one demo-pack question is asked; once its job is ``running`` the
  levels run again (*training*); each level records whether the job was still running at its end.
"""

from __future__ import annotations

import argparse
import gc
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PY, REPO, child_env, machine, percentile, pyplot, run_dir, save, table  # noqa: E402

LOAD_QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?",
                  "What colour is the sky on a clear day?", "Name a prime number between 10 and 20.",
                  "What is water made of?", "Who wrote Romeo and Juliet?", "What is 12 times 12?",
                  "Which planet is closest to the sun?"]
TRAIN_QUESTION = "Who was Brindlemark's first mayor, and when?"
TINY = ["model.threads=1", "lora=all_linear", "trainer.lr=0.01", "trainer.max_steps=120", "trainer.precision=32-true",
        "factory.min_heldout_fraction=0", "router.answer_threshold=0"]


# -- batched vs one at a time, in process -----------------------------------------------------------------
def batch_compare(kind: str, rows_list: list[int], max_tokens: int) -> list[dict]:
    import torch
    from bench_common import shipped_lora
    from bench_hotload import export_card

    from autodidact.data import end_of_turn_id, prompt_ids
    from autodidact.lora_manager import LoRAManager
    from autodidact.models import load_model
    from autodidact.serve.decode import Row, decode_batch

    torch.set_num_threads(1)  # what the server decodes with
    bundle = load_model(kind)
    tok = bundle.tokenizer
    eos, pad = end_of_turn_id(tok), tok.pad_token_id if tok.pad_token_id is not None else end_of_turn_id(tok)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        manager = LoRAManager(bundle, tmp, router=None, max_loaded=8)
        skills = []
        for i in range(4):
            path = export_card(bundle, shipped_lora(), Path(tmp) / f"skill{i}.lora.arrow", f"skill{i}", None)
            skills.append(manager.install(path).name)
        for n in rows_list:
            qs = [LOAD_QUESTIONS[i % len(LOAD_QUESTIONS)] for i in range(n)]
            names = [skills[i % len(skills)] for i in range(n)]

            def rows(qs=qs, names=names):
                return [Row(prompt_ids(tok, q), s, max_tokens) for q, s in zip(qs, names, strict=True)]

            with manager.lock:
                manager.attach_for_batch(names)
                batch = rows()
                t = time.perf_counter()
                decode_batch(bundle.model, tok, batch, eos, pad)
                batched = time.perf_counter() - t
                single = rows()
                t = time.perf_counter()
                for r in single:
                    decode_batch(bundle.model, tok, [r], eos, pad)
                one_by_one = time.perf_counter() - t
            t = time.perf_counter()
            for q, s in zip(qs, names, strict=True):
                manager.answer(s, q, max_tokens)
            generate = time.perf_counter() - t
            tokens = sum(len(r.tokens) for r in batch)
            same = [r.tokens for r in batch] == [r.tokens for r in single]
            out.append({"rows": n, "skills": len(set(names)), "tokens": tokens, "same_tokens": same,
                        "batched_s": round(batched, 3), "one_at_a_time_s": round(one_by_one, 3),
                        "hf_generate_one_at_a_time_s": round(generate, 3),
                        "batched_tok_s": round(tokens / batched, 1), "one_at_a_time_tok_s": round(tokens / one_by_one, 1),
                        "speedup": round(one_by_one / batched, 2)})
            print(f"batch {n}: {out[-1]}", flush=True)
    return out


# -- the endpoint under load ------------------------------------------------------------------------------
class Server:
    def __init__(self, out: Path, model: str, timeout_s: float = 600) -> None:
        cmd = [PY, "evolve.py", "stage=serve", "server.port=0", "logger=none", "teacher=offline", f"model={model}",
               "queue.max_attempts=1", f"skills_dir={out / 'skills'}", f"hydra.run.dir={out / 'server-run'}",
               "trainer.progress_bar=false", *(TINY if model == "tiny" else [])]
        self.err = open(out / "server.stderr", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=self.err, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        self.url = self.proc.stdout.readline().strip() if ready else ""
        if not self.url.startswith("http"):
            self.stop()
            raise RuntimeError(f"the server did not start; see {out / 'server.stderr'}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.err.close()


def ask(client, q: str, max_tokens: int) -> dict:
    r = client.post("/v1/chat/completions", json={"model": "bench", "max_tokens": max_tokens,
                                                   "messages": [{"role": "user", "content": q}]})
    r.raise_for_status()
    return r.json()


def wait_job(client, job: int, until: tuple[str, ...], timeout_s: float) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        state = client.get(f"/v1/jobs/{job}").json()["state"]
        if state in until:
            return state
        time.sleep(0.2)
    return state


def load(url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    import httpx

    lat: list[float] = []
    batch: list[int] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            k = i
            while time.monotonic() < deadline:
                t = time.perf_counter()
                try:
                    r = ask(c, LOAD_QUESTIONS[k % len(LOAD_QUESTIONS)], max_tokens)
                    with lock:
                        lat.append(time.perf_counter() - t)
                        batch.append(r["autodidact"]["batch_size"])
                except Exception:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors[0] += 1
                k += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(lat), "errors": errors[0], "wall_s": round(wall, 2),
            "req_per_s": round(len(lat) / wall, 3),
            "p50_s": round(percentile(lat, 50), 3) if lat else None,
            "p95_s": round(percentile(lat, 95), 3) if lat else None,
            "mean_batch": round(sum(batch) / len(batch), 2) if batch else None}


def serve_load(out: Path, model: str, clients: list[int], seconds: float, max_tokens: int, train: bool,
               train_wait_s: float) -> dict:
    import httpx

    srv = Server(out, model)
    res: dict = {"url": srv.url}
    try:
        with httpx.Client(base_url=srv.url, timeout=600) as c:
            # Warm up, and wait for the learner: the warm-up's event is dead-lettered once it is up.
            job = ask(c, LOAD_QUESTIONS[0], max_tokens)["autodidact"]["learning"]["job"]
            res["learner_ready_state"] = wait_job(c, job, ("dead", "done"), train_wait_s)
            res["idle"] = []
            for n in clients:
                res["idle"].append(load(srv.url, n, seconds, max_tokens))
                print(f"idle {res['idle'][-1]}", flush=True)
            if train:
                job = ask(c, TRAIN_QUESTION, max_tokens)["autodidact"]["learning"]["job"]
                res["train_job"] = job
                res["train_job_reached"] = wait_job(c, job, ("running", "done", "dead"), train_wait_s)
                res["training"] = []
                for n in clients:
                    row = load(srv.url, n, seconds, max_tokens)
                    row["job_still_running"] = c.get(f"/v1/jobs/{job}").json()["state"] == "running"
                    res["training"].append(row)
                    print(f"training {row}", flush=True)
                res["train_job_final"] = c.get(f"/v1/jobs/{job}").json()
                res["health"] = c.get("/healthz").json()
    finally:
        srv.stop()
    return res


def chart(out: Path, results: dict) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for key, style in (("idle", "o-"), ("training", "s--")):
        rows = results["serve"].get(key) or []
        if rows:
            x = [r["clients"] for r in rows]
            axes[0].plot(x, [r["req_per_s"] for r in rows], style, label=key)
            axes[1].plot(x, [r["p50_s"] or 0 for r in rows], style, label=f"{key} p50")
            axes[1].plot(x, [r["p95_s"] or 0 for r in rows], style, alpha=0.5, label=f"{key} p95")
    axes[0].set(xlabel="concurrent clients", ylabel="requests/s", xscale="log")
    axes[1].set(xlabel="concurrent clients", ylabel="latency (s)", xscale="log")
    b = results["batching"]
    axes[2].bar([f"{r['rows']} rows\nbatched" for r in b], [r["batched_tok_s"] for r in b], color="#2f6fde")
    axes[2].bar([f"{r['rows']} rows\none by one" for r in b], [r["one_at_a_time_tok_s"] for r in b], color="#aab4c8")
    axes[2].set(ylabel="tokens/s (mixed skills)")
    for a in axes[:2]:
        a.legend(fontsize=7)
    fig.suptitle(f"serve mode, {results['model']}, {results['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(out / "serve_bench.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=20.0, help="load per level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-rows", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--no-train", action="store_true", help="skip the levels while a skill trains")
    ap.add_argument("--train-wait", type=float, default=600.0, help="seconds to wait for the learner")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = run_dir("serve_bench", args.out)
    results: dict = {"machine": machine(), "model": args.model, "settings": vars(args)}
    results["batching"] = batch_compare(args.model, args.batch_rows, args.max_tokens)
    gc.collect()  # the comparison's model copy goes before the server loads its own
    results["serve"] = serve_load(out, args.model, args.clients, args.seconds, args.max_tokens, not args.no_train,
                                  args.train_wait)
    chart(out, results)
    save(out, "serve_bench", results)
    print(table(["rows", "skills", "tokens", "batched s", "one by one s", "HF generate s", "speed-up"],
                [[r["rows"], r["skills"], r["tokens"], r["batched_s"], r["one_at_a_time_s"],
                  r["hf_generate_one_at_a_time_s"], r["speedup"]] for r in results["batching"]]))
    rows = [[k, r["clients"], r["requests"], r["errors"], r["req_per_s"], r["p50_s"], r["p95_s"], r["mean_batch"],
             r.get("job_still_running", "")]
            for k in ("idle", "training") for r in results["serve"].get(k) or []]
    print(table(["phase", "clients", "requests", "errors", "req/s", "p50 s", "p95 s", "mean batch", "job running"],
                rows))
    print(f"results: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
