worker_concurrency = 42
