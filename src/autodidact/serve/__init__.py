"""Serve mode: an OpenAI-compatible endpoint over a model that learns while it serves.

    client ─► app (FastAPI) ─► ServeEngine: route ─► Decoder thread (batched, one adapter per row)
                                   │ dissonant: queue a LearningEvent (durable queue in skills_dir)
                                   ▼
              learner process (SkillFactory.work_one loop) ─► verified card in skills_dir
                                   ▼
              engine's watcher scans skills_dir ─► LoRAManager.install (hot swap between batches)
"""
