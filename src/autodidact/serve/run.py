"""``python evolve.py stage=serve``: build the loop, start the learner, listen, print the URL.

The socket is bound before uvicorn starts, so ``server.port=0`` (any free port) still prints the
real URL, and the URL is printed only once the model is loaded and the server accepts connections.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autodidact.config import to_dataclass
from autodidact.errors import ConfigError
from autodidact.serve.config import ServerConfig


def run_serve(cfg: DictConfig, run_dir: str | Path) -> None:
    import uvicorn

    from autodidact.evolve_loop import build_autodidact, close_autodidact
    from autodidact.serve.app import create_app
    from autodidact.serve.engine import ServeEngine
    from autodidact.serve.learner import LearnerProcess

    scfg = to_dataclass(ServerConfig, cfg.get("server") or {}, "server")
    sock = socket.socket(socket.AF_INET6 if ":" in scfg.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((scfg.host, scfg.port))  # a port in use fails now, before any model is loaded
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {scfg.host}:{scfg.port} ({e.strerror}); choose another "
                          "server.port (0: any free port) or server.host") from None
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    # The learner loads its own model copy; started first, its start-up overlaps the server's.
    learner = (LearnerProcess(cfg, run_dir, scfg.learner_threads, scfg.learner_nice).start()
               if scfg.learner and cfg.get("learn", True) else None)
    try:
        # The server trains nothing, so it logs nothing to W&B; the learner process keeps cfg.logger.
        bot = build_autodidact(OmegaConf.merge(cfg, {"logger": None}), run_dir, banner="[autodidact] serve mode")
    except BaseException:
        if learner is not None:
            learner.stop()
        sock.close()
        raise
    engine = ServeEngine(bot, scfg, model_id=str(cfg.model.get("name") or cfg.model.kind))
    engine.learner = learner

    def startup() -> None:
        engine.start()
        who = f"pid {learner.proc.pid}" if learner else "off"
        print(f"[autodidact] serving {url}/v1 (OpenAI-compatible; page at {url}/); learner {who}",
              file=sys.stderr, flush=True)
        print(url, flush=True)  # stdout: the URL alone, for scripts

    def shutdown() -> None:
        if learner is not None:
            learner.stop()
        engine.close()
        close_autodidact(bot)

    app = create_app(engine, on_startup=startup, on_shutdown=shutdown)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: that is a normal stop
        print("[autodidact] stopped", file=sys.stderr)
    finally:
        sock.close()
